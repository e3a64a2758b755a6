#!/usr/bin/env bash
# Session 8: top-k / top-p / min-p sampling on the GPU (backend/cuda/kernels/sampling_filter.cuh;
# docs/perf/kernels.md "Session 8: top-k / top-p / min-p on the GPU"; logs in docs/perf/sampling-2026-11-30-s8/).
#   bash bench/sampling_s8.sh build   (here) builds test_sampling in build-sampling/ and packs it with
#                                     bench/pack_carry.sh into build-pkg-sampling/carry.tar.xz
#   bash bench/sampling_s8.sh device  (device machine, carry ["build-pkg-sampling"]): test_sampling, compute-sanitizer
#                                     memcheck + racecheck of its small-vocabulary cases, then the benchmark
#                                     (DISABLED_PerfFiltered: 1 / 16 / 64 rows x 163,840, GPU vs the host sampler);
#                                     logs in $OUT
set -u
mode=${1:-device}
if [[ $mode == build ]]; then
  set -e
  root="$(cd "$(dirname "$0")/.." && pwd)"
  cmake -S "$root" -B "$root/build-sampling" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$root/build-sampling" --target test_sampling -j2
  cd "$root" && PKG=build-pkg-sampling bash bench/pack_carry.sh build-sampling tests/ops/test_sampling
  exit 0
fi
source bench/lib_device.sh
PKG=build-pkg-sampling device_setup
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
timeout "${TEST_S:-60}" $b/test_sampling --gtest_brief=1 >"$o/test_sampling.log" 2>&1
echo "test_sampling rc $?: $(grep -E '^\[  (PASSED|FAILED)' "$o/test_sampling.log" | tr '\n' ' ')"
grep -E "Failure|Expected|Which is|gpu |vocab " -A2 "$o/test_sampling.log" | head -40
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null ||
  find / -name compute-sanitizer -type f 2>/dev/null | head -1)
# The small-vocabulary cases (both paths of the filter kernel: compacted and on the row, ties, -inf, Skip rows).
timeout "${MEMCHECK_S:-40}" $cs --tool memcheck $b/test_sampling --gtest_filter='*EdgeVocabs*:*Ties*:*MixWithOtherModes*' \
  >"$o/memcheck.log" 2>&1
echo "memcheck rc $?"; grep -E "ERROR SUMMARY|PASSED|FAILED" "$o/memcheck.log" | tail -3
timeout "${RACECHECK_S:-45}" $cs --tool racecheck $b/test_sampling --gtest_filter='*Ties*:*MixWithOtherModes*' \
  >"$o/racecheck.log" 2>&1
echo "racecheck rc $?"; grep -E "RACECHECK SUMMARY|ERROR SUMMARY|PASSED|FAILED" "$o/racecheck.log" | tail -3
timeout "${PERF_S:-40}" $b/test_sampling --gtest_also_run_disabled_tests --gtest_filter='*PerfFiltered*' >"$o/perf.log" 2>&1
echo "perf rc $?"; grep -vE "^\[|^$|Note: Google|Running main" "$o/perf.log"

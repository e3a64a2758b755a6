#!/usr/bin/env bash
# The small decode ops of a Kimi-K2 MoE layer at batch 16 (docs/perf/small-ops.md): RMSNorm (+ FP8 quant, + the
# fused bf16 output), the router, permute, gather, scale relayout and combine.
#   bash bench/small_ops.sh build   (here) builds the op tests in build-small-ops/ and packs them with
#                                   bench/pack_carry.sh into build-pkg-small/carry.tar.xz
#   bash bench/small_ops.sh device  (device machine, carry ["build-pkg-small"]): the three op test binaries and
#                                   test_small_ops, its benchmark (before/after the rewrite at git 3c92f03),
#                                   then compute-sanitizer memcheck + racecheck of the new cases; logs in $OUT
set -u
mode=${1:-device}
# TESTS narrows the binaries (build and device alike) when the upload limit is tight: the tracked tree is ~62 MiB
# of the 64 MiB that travel, and all four packed are 2.1 MB.
tests=${TESTS:-"test_small_ops test_model_ops test_moe_ops test_backend_ops"}
if [[ $mode == build ]]; then
  set -e
  root="$(cd "$(dirname "$0")/.." && pwd)"
  cmake -S "$root" -B "$root/build-small-ops" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$root/build-small-ops" --target $tests -j2
  cd "$root" && PKG=build-pkg-small bash bench/pack_carry.sh build-small-ops $(printf 'tests/ops/%s ' $tests)
  exit 0
fi
source bench/lib_device.sh
PKG=build-pkg-small device_setup
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
for t in $tests; do
  timeout "${TEST_S:-60}" $b/$t --gtest_brief=1 >"$o/$t.log" 2>&1
  echo "$t rc $?: $(grep -E '^\[  (PASSED|FAILED)' "$o/$t.log" | tr '\n' ' ')"
  grep -E "Failure|Expected|Which is|differ|poison|written" -A2 "$o/$t.log" | head -20
done
timeout "${PERF_S:-60}" $b/test_small_ops --gtest_also_run_disabled_tests --gtest_filter='*Perf*' >"$o/perf.log" 2>&1
echo "perf rc $?"; grep -vE "^\[|^$|Note: Google|Running main" "$o/perf.log"
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || find / -name compute-sanitizer -type f 2>/dev/null | head -1)
new='*Bf16Out*:*SameBitsAsBefore*:*EmptyBatches*:*BatchInvariant*'
timeout "${MEMCHECK_S:-45}" $cs --tool memcheck $b/test_small_ops --gtest_filter="$new" >"$o/memcheck.log" 2>&1
echo "memcheck rc $?"; grep -E "ERROR SUMMARY|PASSED|FAILED" "$o/memcheck.log" | tail -3
timeout "${RACECHECK_S:-45}" $cs --tool racecheck $b/test_small_ops --gtest_filter='*Bf16Out*:*Permute*:*Gather*:*BatchInvariant*' \
  >"$o/racecheck.log" 2>&1
echo "racecheck rc $?"; grep -E "RACECHECK SUMMARY|ERROR SUMMARY|PASSED|FAILED" "$o/racecheck.log" | tail -3

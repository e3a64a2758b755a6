#!/usr/bin/env bash
# Session 8 of the TMA + wgmma decode GEMM (v5: the L2 prefetch and programmatic dependent launch knobs, the retuned
# cost model; docs/perf/kernels.md "Session 8: v5 at m 16-128"), in one device call.
#   bash bench/fp8_wgmma_s8.sh build   (here) builds test_fp8_gemm_wgmma and test_backend_ops in build-wgmma/ and
#                                      packs them with bench/pack_carry.sh into build-pkg-wgmma/carry.tar.xz
#   bash bench/fp8_wgmma_s8.sh device  (device machine, carry ["build-pkg-wgmma"]): our tests (the multicast ones
#                                      apart), the runner's FP8 GEMM cases, the benchmark (cuBLASLt in the same run)
#                                      with the rows x splits x multicast sweep (K2_WGMMA_SWEEP=1; SWEEP=0 leaves it
#                                      out; K2_WGMMA_PERF_KNOBS=1 adds the L2 prefetch and multicast columns), then
#                                      compute-sanitizer memcheck + racecheck (RACECHECK=0 leaves it out) of the edge
#                                      and knob cases. Logs in $OUT.
set -u
mode=${1:-device}
if [[ $mode == build ]]; then
  set -e
  root="$(cd "$(dirname "$0")/.." && pwd)"
  cmake -S "$root" -B "$root/build-wgmma" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$root/build-wgmma" --target test_fp8_gemm_wgmma test_backend_ops -j2
  cd "$root" && PKG=build-pkg-wgmma bash bench/pack_carry.sh build-wgmma tests/ops/test_fp8_gemm_wgmma \
    tests/ops/test_backend_ops
  exit 0
fi
source bench/lib_device.sh
PKG=build-pkg-wgmma device_setup
t=$b/test_fp8_gemm_wgmma
# Our tests in two runs, so that a hang of the multicast form (timeout) cannot hide the rest: first everything with
# the model kept off multicast (K2_WGMMA_MCAST=1), then the multicast test and the Kimi-K2 shapes with the model free.
K2_WGMMA_MCAST=1 timeout "${TEST_S:-40}" $t --gtest_filter='-*Multicast*' >"$o/test.log" 2>&1
echo "test_fp8_gemm_wgmma (no multicast) rc $?"
grep -E "^\[  (PASSED|FAILED)|^\[       OK|Failure|Expected|Which is|rel_l2|m [0-9]+ n|differs" "$o/test.log" | head -30
timeout 25 $t --gtest_filter='*Multicast*:*KimiShapes*' >"$o/test_mcast.log" 2>&1; mrc=$?
echo "multicast + model test rc $mrc"
grep -E "^\[  (PASSED|FAILED)|^\[       OK|Failure|Expected|Which is|rel_l2|differs" "$o/test_mcast.log" | head -20
[[ $mrc != 0 ]] && export K2_WGMMA_MCAST=1  # the runner's cases and the benchmark without multicast then
gemm='*Fp8Gemm*:*CublasLt*:*GemmHeuristic*:*Validation*'
timeout 20 $b/test_backend_ops --gtest_brief=1 --gtest_filter="$gemm" >"$o/backend_ops.log" 2>&1
echo "test_backend_ops (fp8 gemm cases) rc $?"; grep -E "^\[  (PASSED|FAILED)|Failure" "$o/backend_ops.log" | head -20
[[ ${SWEEP:-1} == 1 ]] && export K2_WGMMA_SWEEP=1
[[ $mrc != 0 ]] && export K2_WGMMA_PERF_MCAST=0
timeout "${PERF_S:-60}" $t --gtest_also_run_disabled_tests --gtest_filter='*Perf*' >"$o/perf.log" 2>"$o/sweep.log"
echo "perf rc $?"; grep -vE "^\[|^$|Note: Google|Running main" "$o/perf.log"
unset K2_WGMMA_SWEEP
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || find / -name compute-sanitizer -type f 2>/dev/null | head -1)
mfilter='*EdgeSizes*:*Empty*:*KnobsChangeNoBits*'
[[ $mrc == 0 ]] && mfilter="$mfilter:*Multicast*"
{
  timeout "${MEMCHECK_S:-25}" $cs --tool memcheck $t --gtest_filter="$mfilter"
  echo "memcheck rc $?"
  if [[ ${RACECHECK:-1} == 1 ]]; then
    timeout "${RACECHECK_S:-30}" $cs --tool racecheck $t --gtest_filter='*KnobsChangeNoBits*'
    echo "racecheck rc $?"
  fi
} >"$o/sanitize.log" 2>&1
grep -E "rc [0-9]+$|ERROR SUMMARY|RACECHECK SUMMARY|^\[  (PASSED|FAILED)" "$o/sanitize.log"

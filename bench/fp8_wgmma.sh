#!/usr/bin/env bash
# The TMA + wgmma decode GEMM (src/backend/cuda/fp8_gemm_wgmma.h, docs/perf/kernels.md) on the GPU machine.
#   bash bench/fp8_wgmma.sh build   (here) builds test_fp8_gemm_wgmma, test_backend_ops and test_cuda_model in
#                                   build-wgmma/ and packs them with bench/pack_carry.sh into
#                                   build-pkg-wgmma/carry.tar.xz
#   bash bench/fp8_wgmma.sh device  (device machine, carry ["build-pkg-wgmma"]): the tests (ours, the runner's FP8
#                                   GEMM cases, the CUDA model), compute-sanitizer memcheck + racecheck of the edge
#                                   cases, and the benchmark (cuBLASLt in the same run; K2_WGMMA_SWEEP=1 adds every
#                                   forced rows x splits)
set -u
mode=${1:-device}
if [[ $mode == build ]]; then
  set -e
  root="$(cd "$(dirname "$0")/.." && pwd)"
  cmake -S "$root" -B "$root/build-wgmma" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$root/build-wgmma" --target test_fp8_gemm_wgmma test_backend_ops test_cuda_model -j2
  cd "$root" && PKG=build-pkg-wgmma bash bench/pack_carry.sh build-wgmma tests/ops/test_fp8_gemm_wgmma \
    tests/ops/test_backend_ops tests/model/test_cuda_model
  exit 0
fi
source bench/lib_device.sh
PKG=build-pkg-wgmma device_setup
t=$b/test_fp8_gemm_wgmma
timeout "${TEST_S:-150}" $t --gtest_brief=1 >"$o/test.log" 2>&1; echo "test_fp8_gemm_wgmma rc $?"
grep -E "^\[  (PASSED|FAILED)|Failure|Expected|Which is|rel_l2|m [0-9]+ n" "$o/test.log" | head -30
gemm='*Fp8Gemm*:*CublasLt*:*GemmHeuristic*:*Validation*'
timeout 120 $b/test_backend_ops --gtest_brief=1 --gtest_filter="$gemm" >"$o/backend_ops.log" 2>&1
echo "test_backend_ops (fp8 gemm cases) rc $?"; grep -E "^\[  (PASSED|FAILED)|Failure" "$o/backend_ops.log" | head -20
if [[ -x $b/test_cuda_model ]]; then
  timeout "${MODEL_S:-150}" $b/test_cuda_model --gtest_brief=1 >"$o/cuda_model.log" 2>&1
  echo "test_cuda_model rc $?"; grep -E "^\[  (PASSED|FAILED)|Failure" "$o/cuda_model.log" | head -20
fi
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || find / -name compute-sanitizer -type f 2>/dev/null | head -1)
timeout "${MEMCHECK_S:-120}" $cs --tool memcheck $t --gtest_filter='*EdgeSizes*:*Empty*' >"$o/memcheck.log" 2>&1
echo "memcheck rc $?"; tail -2 "$o/memcheck.log"
timeout "${RACECHECK_S:-120}" $cs --tool racecheck $t --gtest_filter='*EdgeSizes*' >"$o/racecheck.log" 2>&1
echo "racecheck rc $?"; tail -2 "$o/racecheck.log"
timeout "${PERF_S:-150}" $t --gtest_also_run_disabled_tests --gtest_filter='*Perf*' >"$o/perf.log" 2>"$o/sweep.log"
echo "perf rc $?"; grep -vE "^\[|^$|Note: Google" "$o/perf.log"

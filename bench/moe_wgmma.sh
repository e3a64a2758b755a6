#!/usr/bin/env bash
# The wgmma grouped MoE decode GEMM (src/backend/cuda/moe_gemm_wgmma.h, docs/perf/kernels.md) on the GPU machine.
#   bash bench/moe_wgmma.sh build   (here) builds test_moe_gemm_wgmma in build-moe-wgmma/ and packs it with
#                                   bench/pack_carry.sh into build-pkg-moe/carry.tar.xz (~1 MB)
#   bash bench/moe_wgmma.sh device  (device machine, carry ["build-pkg-moe"]; ~35 s warm): the tests, then the
#                                   benchmark (old grouped decode kernel and the copy rate in the same run), then
#                                   compute-sanitizer memcheck + racecheck of the edge cases; logs in $OUT
set -u
mode=${1:-device}
if [[ $mode == build ]]; then
  set -e
  root="$(cd "$(dirname "$0")/.." && pwd)"
  cmake -S "$root" -B "$root/build-moe-wgmma" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$root/build-moe-wgmma" --target test_moe_gemm_wgmma -j2
  cd "$root" && PKG=build-pkg-moe bash bench/pack_carry.sh build-moe-wgmma tests/ops/test_moe_gemm_wgmma
  exit 0
fi
source bench/lib_device.sh
PKG=build-pkg-moe device_setup
t=$b/test_moe_gemm_wgmma
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
timeout "${TEST_S:-100}" $t --gtest_brief=1 >"$o/test.log" 2>&1; echo "test_moe_gemm_wgmma rc $?"
grep -E "^\[  (PASSED|FAILED)|Failure|Expected|Which is|expert [0-9]+ \(|rel_l2|not bitwise|poison" "$o/test.log" | head -30
timeout "${PERF_S:-120}" $t --gtest_also_run_disabled_tests --gtest_filter='*Perf*' >"$o/perf.log" 2>&1
echo "perf rc $?"; grep -vE "^\[|^$|Note: Google" "$o/perf.log"
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || find / -name compute-sanitizer -type f 2>/dev/null | head -1)
edge='*EdgeRows*:*SmallProblems*:*NoRows*:*GraphCapture*'
timeout "${MEMCHECK_S:-75}" $cs --tool memcheck $t --gtest_filter="$edge" >"$o/memcheck.log" 2>&1
echo "memcheck rc $?"; tail -2 "$o/memcheck.log"
timeout "${RACECHECK_S:-75}" $cs --tool racecheck $t --gtest_filter='*SmallProblems*:*NoRows*' >"$o/racecheck.log" 2>&1
echo "racecheck rc $?"; tail -3 "$o/racecheck.log"

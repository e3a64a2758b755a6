#!/usr/bin/env bash
# The wgmma MLA decode kernel (docs/perf/mla-decode-wgmma.md) on the GPU machine.
#   bash bench/mla_decode_wgmma.sh build   (here) builds the tests in build-mla-decode/ and packs them with
#                                           bench/pack_carry.sh into build-pkg-mladec/carry.tar.xz
#   bash bench/mla_decode_wgmma.sh device  (device machine, carry ["build-pkg-mladec"]): both kernels' CPU-reference
#                                           tests (the wgmma kernel also in its other variants), the graph/determinism
#                                           and FP8-exactness tests, the DCP test, the benchmark (mma.sync, wgmma v6 and
#                                           v7, BF16 and FP8, copy rate in the same run), then compute-sanitizer
#                                           memcheck + racecheck of the wgmma cases; logs in $OUT
set -u
mode=${1:-device}
if [[ $mode == build ]]; then
  set -e
  root="$(cd "$(dirname "$0")/.." && pwd)"
  cd "$root"
  cmake -S . -B build-mla-decode -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build build-mla-decode --target test_backend_ops test_mla_decode_wgmma test_mla_dcp -j2
  PKG=build-pkg-mladec bash bench/pack_carry.sh build-mla-decode tests/ops/test_backend_ops \
    tests/ops/test_mla_decode_wgmma tests/ops/test_mla_dcp
  exit 0
fi
source bench/lib_device.sh
PKG=build-pkg-mladec device_setup
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
summary() { echo "$1: $(grep -E '^\[  (PASSED|FAILED)' "$o/$1.log" | tr '\n' ' ')"; grep -E "Failure|Expected|Which is|rel|differs|race|error" -A2 "$o/$1.log" | head -30; }
timeout "${TEST_S:-150}" $b/test_backend_ops --gtest_brief=1 --gtest_filter='*MlaDecode*:*RejectsBad*' >"$o/ops.log" 2>&1; echo "rc $?"; summary ops
# The other variants of the wgmma kernel (A/B): session 6's combine; the staged FP8 kernel (appended to ops.log)
K2_MLA_WG_COMBINE=v6 timeout 90 $b/test_backend_ops --gtest_brief=1 --gtest_filter='Kernels/CudaMlaDecode.*/wgmma' \
  >"$o/ops_v6.log" 2>&1; echo "rc $?"; summary ops_v6
K2_MLA_WG_FP8=staged timeout 90 $b/test_backend_ops --gtest_brief=1 \
  --gtest_filter='Kernels/CudaMlaDecode.*/wgmma:CudaOps.MlaDecodeBf16Out' >"$o/ops_staged.log" 2>&1; echo "rc $?"
summary ops_staged
{ echo "== K2_MLA_WG_COMBINE=v6"; cat "$o/ops_v6.log"; echo "== K2_MLA_WG_FP8=staged"; cat "$o/ops_staged.log"; } >>"$o/ops.log"
rm -f "$o/ops_v6.log" "$o/ops_staged.log"  # the device call returns at most 8 files
timeout 60 $b/test_mla_decode_wgmma --gtest_brief=1 >"$o/graph.log" 2>&1; echo "rc $?"; summary graph
timeout 60 $b/test_mla_dcp --gtest_brief=1 >"$o/dcp.log" 2>&1; echo "rc $?"; summary dcp
timeout "${PERF_S:-120}" $b/test_mla_decode_wgmma --gtest_also_run_disabled_tests --gtest_filter='*Perf*' >"$o/perf.log" 2>&1
echo "perf rc $?"; grep -vE "^\[|^$|Note: Google" "$o/perf.log"
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || find / -name compute-sanitizer -type f 2>/dev/null | head -1)
edge='Kernels/CudaMlaDecode.*/wgmma:CudaOps.MlaDecodeBf16Out'
timeout "${MEMCHECK_S:-90}" $cs --tool memcheck $b/test_backend_ops --gtest_filter="$edge" >"$o/memcheck.log" 2>&1
echo "memcheck rc $?"; tail -2 "$o/memcheck.log"
echo "== K2_MLA_WG_FP8=staged" >>"$o/memcheck.log"
K2_MLA_WG_FP8=staged timeout "${MEMCHECK_S:-90}" $cs --tool memcheck $b/test_backend_ops \
  --gtest_filter='Kernels/CudaMlaDecode.MlaDecodeFp8Cache/wgmma' >>"$o/memcheck.log" 2>&1
echo "memcheck staged rc $?"; tail -2 "$o/memcheck.log"
timeout "${RACECHECK_S:-90}" $cs --tool racecheck $b/test_backend_ops --gtest_filter='Kernels/CudaMlaDecode.*/wgmma' >"$o/racecheck.log" 2>&1
echo "racecheck rc $?"; tail -3 "$o/racecheck.log"

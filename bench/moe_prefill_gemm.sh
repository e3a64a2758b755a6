#!/usr/bin/env bash
# The one-launch grouped FP8 GEMM of MoE prefill (src/backend/cuda/moe_prefill_gemm.h, docs/perf/moe-prefill-gemm.md)
# on the GPU machine.
#   bash bench/moe_prefill_gemm.sh build   (here) builds test_moe_prefill_gemm and test_cuda_model in
#                                          build-moe-prefill/ and packs them with bench/pack_carry.sh into
#                                          build-pkg-moepf/carry.tar.xz
#   bash bench/moe_prefill_gemm.sh device  (device machine, carry ["build-pkg-moepf"]): the tests, the benchmark
#                                          (the 4-lane cuBLASLt prefill form in the same run), then compute-sanitizer
#                                          memcheck + racecheck of the edge cases, ncu counters of one Kimi-K2 gate_up
#                                          launch, and the CUDA model's golden tests (their 200-token prompts take the
#                                          wgmma prefill GEMM); logs in $OUT
# Knobs (seconds per step: TEST_S PERF_S MEMCHECK_S RACECHECK_S NCU_S WGMMA_S MODEL_S): SHORT=1 stops after
# racecheck; K2_MOE_PERF_QUICK=1 times the m-tile-major variants only; MEMCHECK_EDGE_BLOCK_M / RACECHECK_EDGE_BLOCK_M
# =<64|128|192|256> narrow EdgeRows under that tool to one tile shape (beside the default); MEMCHECK_FILTER,
# RACECHECK_FILTER; NCU_LAUNCHES=<n> profiles the first n launches of the Kimi-K2 gate_up test (variants 128,
# 192, 192 x cluster 2, 256, 256 x cluster 2, 64, 128 x cluster 2; without down), NCU_SECTIONS="WarpStateStats ..."
# adds ncu sections; NO_WGMMA=1 skips the decode kernel's tests.
# Session 8 (docs/perf/moe-prefill-gemm.md "Session 8"), second run: K2_MOE_PERF_QUICK=1 TEST_S=45 PERF_S=55
# MEMCHECK_S=15 RACECHECK_S=12 NCU_S=30 NCU_LAUNCHES=3 NCU_SECTIONS=WarpStateStats NO_WGMMA=1
# bash bench/moe_prefill_gemm.sh device
set -u
mode=${1:-device}
if [[ $mode == build ]]; then
  set -e
  root="$(cd "$(dirname "$0")/.." && pwd)"
  cmake -S "$root" -B "$root/build-moe-prefill" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$root/build-moe-prefill" --target test_moe_prefill_gemm test_moe_gemm_wgmma -j2
  bins="tests/ops/test_moe_prefill_gemm tests/ops/test_moe_gemm_wgmma"
  # The CUDA model's golden tests only with MODEL=1: their binary packs to ~3 MB, more than the upload limit's
  # margin beside the tracked tree on 2026-11-30 (the lead's runs cover them).
  if [[ ${MODEL:-0} == 1 ]]; then
    cmake --build "$root/build-moe-prefill" --target test_cuda_model -j2
    bins="$bins tests/model/test_cuda_model"
  fi
  cd "$root" && PKG=build-pkg-moepf bash bench/pack_carry.sh build-moe-prefill $bins
  exit 0
fi
source bench/lib_device.sh
PKG=build-pkg-moepf device_setup
t=$b/test_moe_prefill_gemm
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
timeout "${TEST_S:-90}" $t --gtest_brief=1 >"$o/test.log" 2>&1
rc=$?
echo "test_moe_prefill_gemm rc $rc"
grep -E "^\[  (PASSED|FAILED)|Failure|Expected|Which is|expert [0-9]+ \(|not bitwise|poison|past row" "$o/test.log" |
  head -30
[[ $rc == 124 ]] && { echo "test timed out (a hang?): skipping the rest"; tail -5 "$o/test.log"; exit 1; }
timeout "${PERF_S:-120}" $t --gtest_also_run_disabled_tests --gtest_filter='*Perf*' >"$o/perf.log" 2>&1
echo "perf rc $?"; grep -vE "^\[|^$|Note: Google" "$o/perf.log"
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || find / -name compute-sanitizer -type f 2>/dev/null | head -1)
K2_MOE_EDGE_BLOCK_M=${MEMCHECK_EDGE_BLOCK_M:-} timeout "${MEMCHECK_S:-50}" $cs --tool memcheck $t \
  --gtest_filter="${MEMCHECK_FILTER:-*TinyP*:*NoRows*:*EdgeRows*}" >"$o/memcheck.log" 2>&1
echo "memcheck rc $?"; tail -2 "$o/memcheck.log"
K2_MOE_EDGE_BLOCK_M=${RACECHECK_EDGE_BLOCK_M:-} timeout "${RACECHECK_S:-30}" $cs --tool racecheck $t --gtest_filter="${RACECHECK_FILTER:-*TinyP*:*NoRows*}" \
  >"$o/racecheck.log" 2>&1
echo "racecheck rc $?"; tail -3 "$o/racecheck.log"
[[ ${SHORT:-0} == 1 ]] && exit 0  # SHORT=1: no ncu, no decode-kernel tests
# Hardware counters of the default launch on Kimi-K2 gate_up at 8k (the first launch of KimiK2Prefill8k).
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || find / -name ncu -type f 2>/dev/null | head -1)
m=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed
m=$m,lts__t_bytes.sum,lts__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_sector_hit_rate.pct
m=$m,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed
K2_MOE_KIMI_GATE_UP_ONLY=1 timeout "${NCU_S:-45}" $ncu --clock-control none -k regex:moe_prefill_gemm \
  --launch-count "${NCU_LAUNCHES:-1}" $(for x in ${NCU_SECTIONS:-}; do echo --section $x; done) --metrics $m $t --gtest_filter='*KimiK2*' >"$o/ncu.log" 2>&1
echo "ncu rc $?"; grep -E "moe_prefill|gpu__|dram__|lts__|sm__|Warp Cycles|Stall|stall" "$o/ncu.log" | cut -c1-160 |
  head -$((20 * ${NCU_LAUNCHES:-1}))
[[ ${NO_WGMMA:-0} == 1 ]] && exit 0
# The decode kernel's tests (their problem setup moved into tests/ops/moe_grouped_ref.h).
timeout "${WGMMA_S:-60}" $b/test_moe_gemm_wgmma --gtest_brief=1 >"$o/moe_gemm_wgmma.log" 2>&1
echo "test_moe_gemm_wgmma rc $?"; grep -E "^\[  (PASSED|FAILED)|Failure" "$o/moe_gemm_wgmma.log" | head -10
if [[ -x $b/test_cuda_model ]]; then
  timeout "${MODEL_S:-90}" $b/test_cuda_model --gtest_brief=1 >"$o/cuda_model.log" 2>&1
  echo "test_cuda_model rc $?"; grep -E "^\[  (PASSED|FAILED)|Failure" "$o/cuda_model.log" | head -10
fi

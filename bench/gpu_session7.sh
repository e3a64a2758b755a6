#!/usr/bin/env bash
# One device call for session 7 (nvidia-h200; carry build-pkg/ packed by bench/pack_carry.sh build-lead k2
# tests/model/test_cuda_model tests/ops/test_* ...). MODES (space-separated), run in order:
#   check:    test_sampling, then test_sampling under compute-sanitizer memcheck and racecheck, then the model tests
#             against the CPU goldens
#   model:    the model tests alone
#   ops:      every other op test driver that was packed, and the fused-op benchmark rows
#   kernels:  the duration of every kernel of a 3-layer eager decode step at batch 16 (ncu, gpu__time_duration, clocks
#             left alone; context 2048 so that the context fill is short): where a MoE layer's decode time goes
#   moe:      test_moe_ops (both forms of the grouped decode GEMM against the reference and bitwise against each
#             other) and the grouped decode GEMM benchmark (blocks vs persistent at L2 prefetch 0/8/16/32, copy rate)
#   ab:       the 3-layer decode step with CUDA graphs: today's defaults, then each change off (K2_MOE_DECODE_KERNEL=blocks,
#             K2_SIDE_STREAM=0), both off (session 6's code path), and L2 prefetch 16; 3 and 2 layers for the defaults and
#             for both-off (one MoE layer = the difference), all in the same run
#   moe_perf: the grouped decode GEMM benchmark alone
#   l2:       the 3- and 2-layer graph steps with the decode GEMM's default L2 prefetch and without
#             (K2_MOE_DECODE_L2_AHEAD=0), twice, same run
#   final:    the model tests (one GPU; the parallel ones that fit on one), the op tests that changed, then the
#             3- and 2-layer graph steps with the session's defaults and with session 6's MoE path (blocks GEMM, no
#             side stream) in the same run, 3 layers eager with per-layer events, and the seed's serve workloads
#   sanitize_moe: compute-sanitizer memcheck and racecheck of the grouped GEMM tests (both decode forms)
#   confirm:  the model tests, then final's four graph steps (this session's defaults and session 6's MoE path)
#   e2e:      the 3-layer Kimi-K2 synth: `k2 bench step` on 3 and 2 layers with CUDA graphs, then the seed's serve
#             workloads, then 3 layers eager with per-layer events
# Logs come back as $OUT/logs.tar.gz (one file: a device call returns only a few files).
set -u
source "$(dirname "$0")/lib_device.sh"
final="${OUT:-out}"
o="$PWD/session7_logs"
mkdir -p "$o" "$final"
trap 'tar -czf "$final/logs.tar.gz" -C "$o" .' EXIT
device_setup
m=/tmp/k2-synth-3
for mode in ${MODES:-check ops}; do
  case $mode in
    check)
      run_test test_sampling '*'
      for tool in memcheck racecheck; do
        timeout 300 compute-sanitizer --tool $tool --error-exitcode 9 $b/test_sampling --gtest_brief=1 \
          >"$o/sanitize_${tool}_test_sampling.log" 2>&1
        echo "compute-sanitizer $tool test_sampling: rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' \
          "$o/sanitize_${tool}_test_sampling.log" | tr '\n' ' ')"
      done
      run_test test_cuda_model '*'
      ;;
    model)
      run_test test_cuda_model '*'
      ;;
    ops)
      run_op_tests
      ;;
    kernels)
      synth
      ncu=$(command -v ncu || find / -name ncu -type f -not -path '/proc/*' 2>/dev/null | head -1)
      timeout 400 "$ncu" --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv \
        --print-units base $b/k2 bench step $m --batch 16 --context 2048 --prefill-tokens 2048 --prefill-runs 1 \
        --decode-steps 2 --enforce-eager >"$o/ncu_decode.csv" 2>"$o/ncu_decode.err"
      echo "ncu rc=$? rows=$(grep -c gpu__time_duration "$o/ncu_decode.csv")"
      tail -3 "$o/ncu_decode.err"
      ;;
    moe)
      run_test test_moe_ops '*'
      timeout 300 $b/test_moe_gemm_wgmma --gtest_also_run_disabled_tests --gtest_filter='*Perf*' |
        tee "$o/perf_moe_decode.log" | grep -vE '^\[|^$|Running|Global|tests? (ran|from)'
      ;;
    moe_perf)
      timeout 300 $b/test_moe_gemm_wgmma --gtest_also_run_disabled_tests --gtest_filter='*Perf*' |
        tee "$o/perf_moe_decode.log" | grep -vE '^\[|^$|Running|Global|tests? (ran|from)'
      ;;
    l2)
      synth
      for r in 1 2; do
        step tp1_r$r --decode-steps 20
        step tp1_l2_r$r --layers 2 --decode-steps 20
        K2_MOE_DECODE_L2_AHEAD=0 step tp1_nol2_r$r --decode-steps 20
        K2_MOE_DECODE_L2_AHEAD=0 step tp1_l2_nol2_r$r --layers 2 --decode-steps 20
      done
      ;;
    ab)
      synth
      step tp1 --decode-steps 20
      step tp1_l2 --layers 2 --decode-steps 20
      K2_MOE_DECODE_KERNEL=blocks step tp1_blocks --decode-steps 20
      K2_SIDE_STREAM=0 step tp1_noside --decode-steps 20
      K2_MOE_DECODE_KERNEL=blocks K2_SIDE_STREAM=0 step tp1_s6 --decode-steps 20
      K2_MOE_DECODE_KERNEL=blocks K2_SIDE_STREAM=0 step tp1_l2_s6 --layers 2 --decode-steps 20
      K2_MOE_DECODE_L2_AHEAD=16 step tp1_l2ahead16 --decode-steps 20
      ;;
    final)
      for t in test_cuda_model test_cuda_model_parallel test_moe_ops test_backend_ops test_mla_decode_wgmma \
        test_mla_dcp test_model_ops test_small_ops; do
        [[ -x $b/$t ]] && run_test $t '*'
      done
      synth
      step tp1 --decode-steps 20
      step tp1_l2 --layers 2 --decode-steps 20
      K2_MOE_DECODE_KERNEL=blocks K2_SIDE_STREAM=0 step tp1_s6 --decode-steps 20
      K2_MOE_DECODE_KERNEL=blocks K2_SIDE_STREAM=0 step tp1_l2_s6 --layers 2 --decode-steps 20
      step tp1_eager --enforce-eager --profile-layers --decode-steps 10
      serve_and_bench tp1 $m
      ;;
    sanitize_moe)
      for tool in memcheck racecheck; do
        timeout 200 compute-sanitizer --tool $tool --error-exitcode 9 $b/test_moe_ops --gtest_brief=1 \
          --gtest_filter='*GroupedGemmTiny*:*GroupedGemmPasses*:*GroupedGemmNoTokens*' \
          >"$o/sanitize_${tool}_test_moe_ops.log" 2>&1
        echo "compute-sanitizer $tool test_moe_ops (grouped GEMM, both decode forms): rc=$? $(grep -E \
          'ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED' "$o/sanitize_${tool}_test_moe_ops.log" | tr '\n' ' ')"
      done
      ;;
    confirm)
      run_test test_cuda_model '*'
      synth
      step tp1 --decode-steps 20
      step tp1_l2 --layers 2 --decode-steps 20
      K2_MOE_DECODE_KERNEL=blocks K2_SIDE_STREAM=0 step tp1_s6 --decode-steps 20
      K2_MOE_DECODE_KERNEL=blocks K2_SIDE_STREAM=0 step tp1_l2_s6 --layers 2 --decode-steps 20
      ;;
    e2e)
      synth
      step tp1 --decode-steps 20
      step tp1_l2 --layers 2 --decode-steps 20
      serve_and_bench tp1 $m
      step tp1_eager --enforce-eager --profile-layers --decode-steps 10
      ;;
  esac
done

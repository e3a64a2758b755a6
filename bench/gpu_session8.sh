#!/usr/bin/env bash
# One device call for session 8 (nvidia-h200; carry build-pkg/ packed by bench/pack_carry.sh build-lead k2
# tests/model/test_cuda_model tests/ops/test_* ...). MODES (space-separated), run in order:
#   check:  the model tests against the CPU goldens (session 7's k split of the grouped decode GEMM is the default for
#           1-8 rows per expert since its last commit), test_moe_ops
#   small:  `k2 bench step` with CUDA graphs at batch 1, 4, 8 and 16 (8k context), the k split on (default) and off
#           (K2_MOE_DECODE_KSPLIT=1), then 2 layers at batch 16 both ways (one MoE layer = 3L - 2L), same run
#   ops:    every op test driver that was packed, and the fused-op benchmark rows
#   dp:     (nvidia-h200-x2) DP + EP decode under CUDA graphs: test_moe_ops (the padding-drop kernel), the model tests
#           (test_cuda_model_parallel: DP 2 over NCCL now replays graphs at steps where both replicas decode or idle),
#           `k2 bench step` -dp 2 --enable-expert-parallel with graphs and with --enforce-eager (session 5's path) and
#           one GPU, then the seed's serve workloads against -dp 2 --enable-expert-parallel with graphs and eager, all
#           in the same run
#   confirm: the sampling benchmark, the 3-layer graph step twice more without and with K2_WGMMA_PDL=1, and the
#           seed's serve workloads with K2_WGMMA_PDL=1 (final's serve run is the default's)
#   final:  the model tests (also with the FP8 GEMM's programmatic dependent launch, K2_WGMMA_PDL=1), every packed op
#           test, the 3-layer graph step at batch 16 without and with K2_WGMMA_PDL=1, 3 layers eager with per-layer
#           events, sampling_checks, and the seed's serve workloads
# Logs come back as $OUT/logs.tar.gz (one file: a device call returns only a few files).
set -u
source "$(dirname "$0")/lib_device.sh"
final="${OUT:-out}"
o="$PWD/session8_logs"
mkdir -p "$o" "$final"
trap 'tar -czf "$final/logs.tar.gz" -C "$o" .' EXIT
device_setup
m=/tmp/k2-synth-3
step_batch() {  # name, batch, flags...: step() at another batch size
  local name=$1 batch=$2
  shift 2
  timeout 300 $b/k2 bench step $m --batch "$batch" --context 8192 --prefill-tokens 8192 --prefill-runs 1 \
    --output-json "$o/step_$name.json" "$@" >"$o/step_$name.log" 2>&1
  echo "step $name: $(tail -n 2 "$o/step_$name.log" | tr '\n' ' ')"
}
# test_sampling under compute-sanitizer (its small-vocabulary cases: both paths of the top-k / top-p / min-p kernel,
# ties, -inf, Skip rows), its benchmark (1 / 16 / 64 rows x 163,840 against the host sampler), then one streamed chat
# request with top_k / top_p / min_p against the GPU server (rows sampled by that kernel end to end).
sampling_checks() {
  local tool
  for tool in memcheck racecheck; do
    timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 $b/test_sampling --gtest_brief=1 \
      --gtest_filter='*EdgeVocabs*:*Ties*:*MixWithOtherModes*' >"$o/sanitize_${tool}_test_sampling.log" 2>&1
    echo "compute-sanitizer $tool test_sampling: rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' \
      "$o/sanitize_${tool}_test_sampling.log" | tr '\n' ' ')"
  done
  timeout 60 $b/test_sampling --gtest_also_run_disabled_tests --gtest_filter='*PerfFiltered*' >"$o/perf_sampling.log" 2>&1
  echo "perf_sampling rc $?"
  grep -vE "^\[|^$|Note: Google|Running main" "$o/perf_sampling.log"
  $b/k2 serve $m --device cuda --port 8014 --max-model-len 4096 --disable-log-requests >"$o/serve_filtered.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 240); do curl -sf localhost:8014/health >/dev/null 2>&1 && break; sleep 1; done
  curl -s localhost:8014/v1/completions -H 'Content-Type: application/json' -d "{\"model\": \"$m\", \"prompt\": \"a b c\",
    \"max_tokens\": 16, \"temperature\": 0.7, \"top_p\": 0.9, \"top_k\": 50, \"min_p\": 0.05, \"seed\": 7}" \
    >"$o/filtered_completion.json"
  echo "filtered completion: $(head -c 400 "$o/filtered_completion.json")"
  kill -TERM $pid
  wait $pid 2>/dev/null
}
for mode in ${MODES:-check small}; do
  case $mode in
    check)
      run_test test_cuda_model '*'
      run_test test_moe_ops '*'
      ;;
    small)
      synth
      for batch in 1 4 8 16; do
        step_batch b${batch} $batch --decode-steps 20
        K2_MOE_DECODE_KSPLIT=1 step_batch b${batch}_nosplit $batch --decode-steps 20
      done
      step_batch b16_l2 16 --layers 2 --decode-steps 20
      K2_MOE_DECODE_KSPLIT=1 step_batch b16_l2_nosplit 16 --layers 2 --decode-steps 20
      ;;
    ops)
      run_op_tests
      ;;
    dp)
      run_test test_moe_ops '*'
      run_test test_cuda_model '*'
      run_test test_cuda_model_parallel '*'
      synth
      step tp1 --decode-steps 20
      step dp2_ep -dp 2 --enable-expert-parallel --decode-steps 20
      step dp2_ep_eager -dp 2 --enable-expert-parallel --decode-steps 20 --enforce-eager
      serve_and_bench dp2_ep $m -dp 2 --enable-expert-parallel
      serve_and_bench dp2_ep_eager $m -dp 2 --enable-expert-parallel --enforce-eager
      ;;
    confirm)  # after final: the sampling benchmark, then the PDL A/B twice more and the serve workloads with PDL
      timeout 60 $b/test_sampling --gtest_also_run_disabled_tests --gtest_filter='*PerfFiltered*' \
        >"$o/perf_sampling.log" 2>&1
      echo "perf_sampling rc $?"
      grep -vE "^\[|^$|Note: Google|Running main" "$o/perf_sampling.log"
      synth
      for r in 1 2; do
        step tp1_r$r --decode-steps 20
        K2_WGMMA_PDL=1 step tp1_pdl_r$r --decode-steps 20
      done
      tar -czf "$final/logs.tar.gz" -C "$o" .
      K2_WGMMA_PDL=1 serve_and_bench tp1_pdl $m
      ;;
    final)  # ordered by need; the logs are packed after each part in case the call runs out of time
      run_test test_cuda_model '*'
      K2_WGMMA_PDL=1 run_test test_cuda_model '*'
      mv "$o/test_cuda_model.log" "$o/test_cuda_model_pdl.log"
      run_test test_cuda_model '*'
      run_op_tests
      tar -czf "$final/logs.tar.gz" -C "$o" .
      synth
      step tp1 --decode-steps 20
      K2_WGMMA_PDL=1 step tp1_pdl --decode-steps 20
      step tp1_eager --enforce-eager --profile-layers --decode-steps 10
      tar -czf "$final/logs.tar.gz" -C "$o" .
      sampling_checks
      tar -czf "$final/logs.tar.gz" -C "$o" .
      serve_and_bench tp1 $m
      ;;
  esac
done

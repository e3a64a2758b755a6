#!/usr/bin/env bash
# One device call for session 5 (run on nvidia-h200-x2; carry build-pkg/ packed by
# bench/pack_carry.sh build-lead k2 tests/model/test_cuda_model tests/model/test_cuda_model_parallel, plus
# tests/engine/bench_sampler for the sampler mode).
#   dp:    data + expert parallelism on GPUs: the model tests (DP 2 x TP 1/2 host-staged on one GPU, DP 2 over NCCL on
#          two, and the existing TP / EP / DCP ones), `k2 bench step` -dp 2 --enable-expert-parallel (per-layer and
#          all-gather / reduce-scatter times) next to one GPU and -tp 2 --enable-expert-parallel in the same run, and
#          the seed's serve workloads against -dp 2 --enable-expert-parallel
#   ab:    the one-GPU serve TPOT with and without --async-scheduling, and the GEMM v5 A/B (K2_DISABLE_WGMMA_GEMM=1)
#   final: the model tests, then one GPU, one GPU --async-scheduling, -dp 2 --enable-expert-parallel (with and without
#          --async-scheduling) and the GEMM v5 A/B, with K2_STEP_TIMING=1 (the engine's host time per step)
#   model: the one-GPU model tests alone
#   sampler: bench_sampler (the sampler's host time per row, the previous draw timed beside it), then the one-GPU
#          serve with and without --async-scheduling (K2_STEP_TIMING=1)
#   dp_serve: the seed's workloads against -dp 2 --enable-expert-parallel, with and without --async-scheduling
# Logs come back as $OUT/logs.tar.gz.
set -u
source "$(dirname "$0")/lib_device.sh"
final="${OUT:-out}"
o="$PWD/session5_logs"
device_setup
mkdir -p "$final"
trap 'tar -czf "$final/logs.tar.gz" -C "$o" .' EXIT
m=/tmp/k2-synth-3
for mode in ${MODES:-dp}; do
  case $mode in
    dp)
      run_test test_cuda_model_parallel "${DP_FILTER:-*}"
      synth
      step tp1 --decode-steps 20
      step dp2_ep_prof -dp 2 --enable-expert-parallel --decode-steps 10 --profile-layers
      step tp2_ep -tp 2 --enable-expert-parallel --decode-steps 20
      step tp2_ep_eager -tp 2 --enable-expert-parallel --decode-steps 10 --enforce-eager
      serve_and_bench dp2_ep $m -dp 2 --enable-expert-parallel
      ;;
    ab)
      synth
      serve_and_bench tp1 $m
      serve_and_bench tp1_async $m --async-scheduling
      K2_DISABLE_WGMMA_GEMM=1 serve_and_bench tp1_no_wgmma $m
      ;;
    final)  # after --async-scheduling and the shared-memory logits landed: the model tests, then every serve once
      run_test test_cuda_model '*'
      run_test test_cuda_model_parallel '*DataExpert*:*ExpertParallelMatches*:*PeerMemory*'
      synth
      step dp2_ep_prof -dp 2 --enable-expert-parallel --decode-steps 10 --profile-layers
      step tp2_ep -tp 2 --enable-expert-parallel --decode-steps 20
      export K2_STEP_TIMING=1
      serve_and_bench tp1 $m
      serve_and_bench tp1_async $m --async-scheduling
      serve_and_bench dp2_ep $m -dp 2 --enable-expert-parallel
      serve_and_bench dp2_ep_async $m -dp 2 --enable-expert-parallel --async-scheduling
      K2_DISABLE_WGMMA_GEMM=1 serve_and_bench tp1_no_wgmma $m
      grep -h "step timing\|host time" "$o"/serve_*.log | tail -20
      ;;
    model)
      run_test test_cuda_model '*'
      ;;
    sampler)  # the vectorized sampler: its host time per row (baseline in the same run), then the one-GPU serve
      $b/bench_sampler | tee "$o/bench_sampler.log"
      synth
      export K2_STEP_TIMING=1
      serve_and_bench tp1 $m
      serve_and_bench tp1_async $m --async-scheduling
      grep -h "step timing (all" "$o"/serve_*.log
      ;;
    dp_serve)  # -dp 2 --enable-expert-parallel through the server after the vectorized sampler
      synth
      export K2_STEP_TIMING=1
      serve_and_bench dp2_ep $m -dp 2 --enable-expert-parallel
      serve_and_bench dp2_ep_async $m -dp 2 --enable-expert-parallel --async-scheduling
      grep -h "step timing (all" "$o"/serve_*.log
      ;;
  esac
done

#!/usr/bin/env bash
# One device call for session 4's multi-GPU work (run on nvidia-h200-x2; carry build-pkg/ packed by
# bench/pack_carry.sh build-lead k2 tests/ops/test_moe_ops tests/ops/test_mla_dcp
# tests/model/test_cuda_model tests/model/test_cuda_model_parallel).
#   check:   the op tests of the EP / DCP pieces, the CUDA model tests (one GPU) and the tensor-parallel model
#            tests (TP, EP over TP, TP x DCP: host-staged on one GPU and over NCCL on two)
#   step:    `k2 bench step` on a 3-layer Kimi-K2 synth: one GPU, -tp 2 (NCCL and P2P all-reduce), -tp 2 with
#            --enable-expert-parallel, -tp 2 -dcp 2; per-layer and all-reduce times (eager profile) + graph steps
#   serve:   the seed's serve workloads against -tp 2, -tp 2 --enable-expert-parallel and -tp 2 -dcp 2
#   dcp:     the -tp 2 -dcp 2 step alone
#   dcp_serve: the -tp 2 -dcp 2 step and the seed's workloads against it
#   four:    (4 GPUs) steps with -tp 4 (P2P / NCCL all-reduce, EP, DCP 4) and -tp 2 -dcp 2; serve -tp 4 (-dcp 4)
# Logs come back as $OUT/logs.tar.gz, the step/bench JSON files beside it.
set -u
source "$(dirname "$0")/lib_device.sh"
final="${OUT:-out}"
o="$PWD/session4_logs"
device_setup
mkdir -p "$final"
# Only a few files come back: one tarball of everything (logs and JSON).
trap 'tar -czf "$final/logs.tar.gz" -C "$o" .' EXIT
m=/tmp/k2-synth-3
for mode in ${MODES:-check step}; do
  case $mode in
    check)
      [[ -x $b/test_moe_ops ]] && run_test test_moe_ops '*Permute*:*ScalesToExpertBlocked*:*Gather*:*GroupedGemmTiny*'
      run_test test_mla_dcp '*'
      [[ -x $b/test_mla_ops ]] && run_test test_mla_ops '*Attention*'
      run_test test_cuda_model '*'
      run_test test_cuda_model_parallel '*'
      ;;
    step)
      synth
      step tp1 --decode-steps 20
      step tp1_prof --decode-steps 10 --enforce-eager --profile-layers
      K2_TP_COMM=nccl step tp2_nccl_prof -tp 2 --decode-steps 10 --enforce-eager --profile-layers
      step tp2_prof -tp 2 --decode-steps 10 --enforce-eager --profile-layers
      K2_TP_COMM=nccl step tp2_nccl -tp 2 --decode-steps 20
      step tp2 -tp 2 --decode-steps 20
      step tp2_ep_prof -tp 2 --enable-expert-parallel --decode-steps 10 --enforce-eager --profile-layers
      step tp2_ep -tp 2 --enable-expert-parallel --decode-steps 20
      step tp2_dcp2 -tp 2 -dcp 2 --decode-steps 10 --profile-layers
      ;;
    dcp)
      synth
      step tp2_dcp2 -tp 2 -dcp 2 --decode-steps 10 --profile-layers
      step tp2_dcp2_eager -tp 2 -dcp 2 --decode-steps 10 --enforce-eager --profile-layers
      ;;
    dcp_serve)
      synth
      step tp2_dcp2 -tp 2 -dcp 2 --decode-steps 10 --profile-layers
      serve_and_bench tp2_dcp2 $m -tp 2 -dcp 2
      ;;
    final)  # after the wgmma decode GEMM landed in the runner: the model tests, one-GPU steps (3 layers and the
      # dense layer alone: a MoE layer by difference), -tp 4, and the seed's workloads on one GPU
      run_test test_cuda_model '*'
      run_test test_cuda_model_parallel '*'
      synth
      step tp1 --decode-steps 20
      step tp1_l1 --layers 1 --decode-steps 20
      step tp4 -tp 4 --decode-steps 20
      serve_and_bench tp1 $m
      ;;
    wgmma_ab)  # the seed's workloads on one GPU with and without the v5 GEMM (1 dense layer: the GEMMs it changes)
      m1=/tmp/k2-synth-1
      timeout 100 $b/k2 synth $m1 --preset kimi-k2 --layers 1 >"$o/synth1.log" 2>&1 || tail -3 "$o/synth1.log"
      serve_and_bench l1_wgmma $m1
      K2_DISABLE_WGMMA_GEMM=1 serve_and_bench l1_no_wgmma $m1
      ;;
    four)  # nvidia-h200-x4: the same step on 4 GPUs, and the seed's workloads against -tp 4
      synth
      step tp2_dcp2 -tp 2 -dcp 2 --decode-steps 10 --profile-layers
      step tp4_prof -tp 4 --decode-steps 10 --enforce-eager --profile-layers
      step tp4 -tp 4 --decode-steps 20
      K2_TP_COMM=nccl step tp4_nccl -tp 4 --decode-steps 20
      step tp4_ep -tp 4 --enable-expert-parallel --decode-steps 20
      step tp4_dcp4 -tp 4 -dcp 4 --decode-steps 10 --profile-layers
      serve_and_bench tp4 $m -tp 4
      serve_and_bench tp2_dcp2 $m -tp 2 -dcp 2
      serve_and_bench tp4_dcp4 $m -tp 4 -dcp 4
      ;;
    serve)
      synth
      serve_and_bench tp1 $m
      serve_and_bench tp2 $m -tp 2
      serve_and_bench tp2_ep $m -tp 2 --enable-expert-parallel
      serve_and_bench tp2_dcp2 $m -tp 2 -dcp 2
      ;;
  esac
done

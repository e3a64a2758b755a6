#!/usr/bin/env bash
# One device call for session 6 (nvidia-h200; carry build-pkg/ packed by bench/pack_carry.sh build-lead k2
# tests/model/test_cuda_model tests/ops/test_* ...). MODES (space-separated), run in order:
#   check: sampling on the GPU (test_sampling against the host sampler; the model's device-sampled rows against the
#          host sampler on the same logits) and the model tests against the CPU goldens
#   e2e:   the 3-layer Kimi-K2 synth: `k2 bench step` on 3 and on 2 layers with CUDA graphs (one MoE layer = the
#          difference), then the seed's serve workloads with sampling on the GPU (the default) and on the host
#          (K2_HOST_SAMPLING=1), then 3 layers eager with per-layer events
#   ops:   every other op test driver that was packed (CUDA vs the CPU references), and the fused-op benchmark rows
#          (test_backend_ops --perf --only quant, copy rate in the same run)
#   mla_ab: the 3-layer decode step with the wgmma MLA decode kernel (the default) and the mma.sync one
#          (K2_MLA_DECODE_KERNEL=mma), with CUDA graphs and eager with per-layer events, in the same run
#   x4:    DP 2 x TP 2 over NCCL (needs 4 GPUs)
# Logs come back as $OUT/logs.tar.gz (one file: a device call returns only a few files).
set -u
source "$(dirname "$0")/lib_device.sh"
final="${OUT:-out}"
o="$PWD/session6_logs"
mkdir -p "$o" "$final"
trap 'tar -czf "$final/logs.tar.gz" -C "$o" .' EXIT
device_setup
m=/tmp/k2-synth-3
for mode in ${MODES:-check e2e ops}; do
  case $mode in
    check)
      run_test test_sampling '*'
      run_test test_cuda_model '*'
      ;;
    e2e)
      synth
      step tp1 --decode-steps 20
      step tp1_l2 --layers 2 --decode-steps 20
      serve_and_bench tp1 $m
      K2_HOST_SAMPLING=1 serve_and_bench tp1_host_sampling $m  # the same run without sampling on the GPU
      step tp1_eager --enforce-eager --profile-layers --decode-steps 10
      ;;
    ops)
      run_op_tests
      ;;
    mla_ab)
      synth
      step tp1 --decode-steps 20
      K2_MLA_DECODE_KERNEL=mma step tp1_mma --decode-steps 20
      step tp1_eager --enforce-eager --profile-layers --decode-steps 10
      K2_MLA_DECODE_KERNEL=mma step tp1_mma_eager --enforce-eager --profile-layers --decode-steps 10
      ;;
    x4)
      run_test test_cuda_model_parallel '*DataExpertParallelNccl*'
      ;;
  esac
done

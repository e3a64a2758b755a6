#!/usr/bin/env bash
# MoE prefill lanes on the GPU machine (docs/perf/kernels.md): op tests (test_moe_ops incl. GroupedGemmPrefillLanes),
# the model tests, and `k2 bench step` (eager, per-layer times) on a 3-layer Kimi-K2 synth with K2_MOE_PREFILL_LANES
# = 1, 4, 2. Carry build-pkg/ with carry.tar.xz (stripped k2, test_moe_ops, test_cuda_model + .so files, packed like
# bench/gpu_model.sh build) and run `bash bench/moe_prefill_lanes.sh`.
set -u
source "$(dirname "$0")/lib_device.sh"
device_setup
timeout 200 $b/test_moe_ops --gtest_brief=1 >"$o/moe_ops.log" 2>&1; grep -E "^\[  (PASSED|FAILED)|Failure" -A4 "$o/moe_ops.log" | head -30
timeout 200 $b/test_cuda_model --gtest_brief=1 >"$o/cuda_model.log" 2>&1; grep -E "^\[  (PASSED|FAILED)" "$o/cuda_model.log"
m=/tmp/k2-synth-3
timeout 200 $b/k2 synth $m --preset kimi-k2 --layers 3 >"$o/synth.log" 2>&1 || tail -3 "$o/synth.log"
for lanes in 1 4 2; do
  K2_MOE_PREFILL_LANES=$lanes timeout 200 $b/k2 bench step $m --batch 16 --context 4096 --prefill-tokens 8192 --prefill-runs 3 \
    --decode-steps 10 --enforce-eager --profile-layers --output-json "$o/step_lanes$lanes.json" >"$o/step_lanes$lanes.log" 2>&1
  echo "lanes $lanes:"; grep -E "layer_attn_ffn_ms" -A12 "$o/step_lanes$lanes.log" | tr -d ' \n'; echo; tail -n 2 "$o/step_lanes$lanes.log"
done

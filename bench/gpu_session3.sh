#!/usr/bin/env bash
# One device call that re-checks and re-measures what session 3 changed (run on the 2-GPU kind, GPU 0 for the
# single-GPU parts): the MLA decode op tests (FP8 cache, TP head counts), the MoE and MLA prefill op tests, the CUDA
# model tests (single rank; TP=2 host-staged and over NCCL), `k2 bench step` on a 3-layer Kimi-K2 synth (graphs,
# BF16 and FP8 cache) and the seed's serve workloads on one GPU and with -tp 2. Carry build-pkg/ with carry.tar.xz
# (stripped k2 + the five test drivers + .so files, packed like bench/gpu_model.sh build). Logs: $OUT/logs.tar.gz.
set -u
source "$(dirname "$0")/lib_device.sh"
final="${OUT:-out}"
o="$PWD/session3_logs"  # one tarball comes back: the device call returns only a few files
device_setup
mkdir -p "$final"
trap 'tar -czf "$final/logs.tar.gz" -C "$o" .; cp "$o"/*.json "$final/" 2>/dev/null' EXIT
run_test() {  # binary, gtest filter
  timeout 240 $b/$1 --gtest_brief=1 --gtest_filter="$2" >"$o/$1.log" 2>&1
  echo "$1: $(grep -E '^\[  (PASSED|FAILED)' "$o/$1.log" | tr '\n' ' ')"; grep -E "Failure|tp2 vs" -A3 "$o/$1.log" | head -12
}
run_test test_backend_ops '*MlaDecode*'
# test_mla_prefill, test_moe_ops and test_cuda_model passed earlier this session on the same kernels (docs/perf)
run_test test_cuda_model_parallel '*'
m=/tmp/k2-synth-3
timeout 200 $b/k2 synth $m --preset kimi-k2 --layers 3 >"$o/synth.log" 2>&1 || tail -3 "$o/synth.log"
for dt in bfloat16 fp8; do
  timeout 200 $b/k2 bench step $m --batch 16 --context 8192 --prefill-tokens 8192 --prefill-runs 2 --kv-cache-dtype $dt \
    --output-json "$o/step_$dt.json" >"$o/step_$dt.log" 2>&1; echo "step $dt:"; tail -n 2 "$o/step_$dt.log"
done
serve_and_bench tp1 $m
serve_and_bench tp2 $m -tp 2

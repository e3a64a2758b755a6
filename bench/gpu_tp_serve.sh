#!/usr/bin/env bash
# Tensor parallelism on GPUs end to end (issue 10 point 3): a 3-layer Kimi-K2 synth served on one GPU and with
# -tp 2 (one rank per GPU, NCCL all-reduces), each measured with `k2 bench serve` on the seed's H800 and H200
# workloads (vllm.md §4 flags) in the same run. Needs the 2-GPU machine; carry build-pkg/ with carry.tar.xz holding
# build-lead-carry/{bin/k2,rt} (bench/lib_device.sh) and run `bash bench/gpu_tp_serve.sh`.
set -u
source "$(dirname "$0")/lib_device.sh"
device_setup
m=/tmp/k2-synth-3
timeout 200 $b/k2 synth $m --preset kimi-k2 --layers 3 >"$o/synth.log" 2>&1 || tail -3 "$o/synth.log"
serve_and_bench tp1 $m
serve_and_bench tp2 $m -tp 2
grep -E "GPU KV cache|tensor-parallel rank|rank .* assigned" "$o"/serve_tp*.log | head -8

#!/usr/bin/env bash
# FP8 split-KV MLA decode on the GPU machine (docs/perf/kernels.md): the op tests, memcheck + racecheck of the FP8
# case, the op benchmark (BF16 vs FP8 cache in the same run) and `k2 bench step` on a 2-layer Kimi-K2 synth with
# each cache dtype. Carry build-pkg/ holding carry.tar.xz (stripped k2 + test_backend_ops + their .so files, packed
# like bench/gpu_model.sh build) and run `bash bench/mla_fp8_decode.sh`.
set -u
source "$(dirname "$0")/lib_device.sh"
device_setup
$b/test_backend_ops --gtest_brief=1 >"$o/ops.log" 2>&1; grep -E "^\[  (PASSED|FAILED)|Failure" -A3 "$o/ops.log" | head -30
cs=$(command -v compute-sanitizer || find / -name compute-sanitizer -type f 2>/dev/null | head -1)
timeout 150 $cs --tool memcheck $b/test_backend_ops --gtest_filter='*MlaDecodeFp8*' >"$o/memcheck.log" 2>&1; tail -3 "$o/memcheck.log"
timeout 150 $cs --tool racecheck $b/test_backend_ops --gtest_filter='*MlaDecodeFp8*' >"$o/racecheck.log" 2>&1; tail -3 "$o/racecheck.log"
timeout 200 $b/test_backend_ops --perf >"$o/perf.log" 2>&1; grep -E "copy rate|mla_decode" "$o/perf.log"
m=/tmp/k2-synth-2
timeout 200 $b/k2 synth $m --preset kimi-k2 --layers 2 >"$o/synth.log" 2>&1 || tail -5 "$o/synth.log"
for dt in bfloat16 fp8; do
  timeout 200 $b/k2 bench step $m --batch 16 --context 8192 --prefill-tokens 8192 --prefill-runs 1 --kv-cache-dtype $dt \
    --output-json "$o/step_$dt.json" >"$o/step_$dt.log" 2>&1; tail -n 4 "$o/step_$dt.log"
done

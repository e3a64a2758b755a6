# Shared by the one-call device scripts of sessions 3-5 (bench/mla_fp8_decode.sh, moe_prefill_lanes.sh,
# gpu_tp_serve.sh, gpu_session3.sh, gpu_session4.sh, gpu_session5.sh); sourced, not run. device_setup unpacks
# $PKG/carry.tar.xz (PKG defaults to build-pkg; bench/pack_carry.sh made it: build-lead-carry/{bin,rt}, the stripped
# binaries and the .so files the device image lacks), finds cuBLASLt and NCCL on the image and sets $b (binaries)
# and $o (output folder: $OUT on the device).
device_setup() {
  tar -xJf "${PKG:-build-pkg}/carry.tar.xz"
  export LD_LIBRARY_PATH="$PWD/build-lead-carry/rt:${LD_LIBRARY_PATH:-}"
  local so f
  for so in 'libcublasLt.so.13*' 'libnccl.so.2*'; do
    f="$(find / -name "$so" -not -path '/proc/*' 2>/dev/null | head -1 || true)"
    [[ -n "$f" ]] && export LD_LIBRARY_PATH="$(dirname "$f"):$LD_LIBRARY_PATH"
  done
  export NCCL_NVLS_ENABLE=0 K2_SOURCE_DIR="$PWD"  # NVLink multicast stays off on the shared machines
  b=build-lead-carry/bin
  o="${o:-${OUT:-out}}"
  mkdir -p "$o"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$o/gpu.txt"
  date -u | tee -a "$o/gpu.txt"
}

# serve_and_bench NAME MODEL [serve flags...]: `k2 serve MODEL --device cuda` on port 8013, then `k2 bench serve`
# with the seed's H800 (1000 in / 512 out, 8 prompts, rate 1) and H200 (8000 / 1000, 16 prompts, rate 10000)
# workloads (vllm.md §4 flags); JSON and logs in $o.
serve_and_bench() {
  local name=$1 model=$2
  shift 2
  $b/k2 serve "$model" --device cuda --port 8013 --max-model-len 10240 --max-num-seqs 16 \
    --max-num-batched-tokens 8192 --gpu-memory-utilization 0.9 --disable-log-requests "$@" >"$o/serve_$name.log" 2>&1 &
  local pid=$! w
  for _ in $(seq 1 240); do curl -sf localhost:8013/health >/dev/null 2>&1 && break; sleep 1; done
  for w in "h800 1000 512 8 1" "h200 8000 1000 16 10000"; do
    set -- $w
    timeout 200 $b/k2 bench serve --port 8013 --model "$model" --tokenizer "$model" --dataset-name random \
      --random-input-len $2 --random-output-len $3 --num-prompts $4 --request-rate $5 --ignore-eos --save-result \
      --result-dir "$o" --result-filename "bench_${name}_$1.json" >"$o/bench_${name}_$1.log" 2>&1
    echo "== $name $1"
    grep -E "Failed|Output token throughput|Mean TTFT|Mean TPOT|Median ITL" "$o/bench_${name}_$1.log"
  done
  kill -TERM $pid
  wait $pid 2>/dev/null
}

# The one-call scripts' helpers (bench/gpu_session4.sh, gpu_session5.sh); they need $b, $o and, for synth/step, $m.
run_test() {  # binary, gtest filter: its log in $o, the summary and the first failures on stdout
  timeout 400 $b/$1 --gtest_brief=1 --gtest_filter="$2" >"$o/$1.log" 2>&1
  echo "$1: $(grep -E '^\[  (PASSED|FAILED)' "$o/$1.log" | tr '\n' ' ')"
  grep -E "Failure|vs tp1|rank [0-9]+ failed" -A3 "$o/$1.log" | head -40
}
synth() {  # the 3-layer Kimi-K2 synth at $m (once per call)
  [[ -d $m ]] || timeout 200 $b/k2 synth $m --preset kimi-k2 --layers 3 >"$o/synth.log" 2>&1 || tail -3 "$o/synth.log"
}
step() {  # name, flags...: `k2 bench step` at batch 16 x 8k on $m; the summary and per-layer medians on stdout
  local name=$1
  shift
  timeout 300 $b/k2 bench step $m --batch 16 --context 8192 --prefill-tokens 8192 --prefill-runs 2 \
    --output-json "$o/step_$name.json" "$@" >"$o/step_$name.log" 2>&1
  echo "step $name: $(tail -n 2 "$o/step_$name.log" | tr '\n' ' ')"
  grep -E '"decode_(layer_(attn_ffn|allreduce)|moe_layer_ep_allgather_reducescatter)_ms"' -A12 "$o/step_$name.log" |
    tr -d ' \n'
  echo
}

# Every op test driver that was packed (CUDA vs the CPU references), then the fused-op benchmark rows (the copy rate
# in the same run). Needs $b and $o.
run_op_tests() {
  local t
  for t in test_backend_ops test_fp8_gemm_wgmma test_moe_gemm_wgmma test_moe_ops test_mla_ops test_mla_prefill \
    test_mla_dcp test_mla_decode_wgmma test_model_ops test_moe_prefill_gemm test_sampling test_small_ops; do
    [[ -x $b/$t ]] && run_test $t '*'
  done
  $b/test_backend_ops --perf --only quant | tee "$o/perf_quant.log"
}

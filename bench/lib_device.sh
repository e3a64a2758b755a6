# Shared by the one-call device scripts of session 3 (bench/mla_fp8_decode.sh, moe_prefill_lanes.sh, gpu_tp_serve.sh,
# gpu_session3.sh); sourced, not run. device_setup unpacks build-pkg/carry.tar.xz (build-lead-carry/{bin,rt}: the
# stripped binaries and the .so files the device image lacks), finds cuBLASLt and NCCL on the image and sets
# $b (binaries) and $o (output folder: $OUT on the device machine).
device_setup() {
  tar -xJf build-pkg/carry.tar.xz
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

#!/usr/bin/env bash
# The CUDA model runner (issue 8) and the new CUDA ops in few device calls.
#
#   bench/gpu_model.sh build    # here (no GPU needed): Release build of k2 and the CUDA test drivers into
#                               # build-cuda/, stripped, with the shared libraries the device image lacks in build-cuda/rt
#   bench/gpu_model.sh check    # on the GPU: op tests (+ compute-sanitizer memcheck), the model tests vs the goldens,
#                               # the tiny model served on the GPU with the openai-client and bench tests
#   bench/gpu_model.sh e2e [N]  # on the GPU: k2 synth --preset kimi-k2 --layers N, `k2 bench step` (N and N-1
#                               # layers, graphs on; eager with per-layer times; FP8 cache), `k2 bench serve` with the
#                               # seed's H200 and H800 workloads, and transformers' eager decode step
# Logs and JSON go to $OUT (or ./gpu_model_out). The device call carries build-cuda/carry.tar.xz.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-check}"
build_dir="${K2_CUDA_BUILD_DIR:-build-cuda}"
bin="$build_dir/bin"
tests=(test_backend_ops test_model_ops test_mla_ops test_moe_ops test_mla_prefill test_cuda_model)

if [[ "$mode" == "build" ]]; then
    if ! grep -q "CMAKE_BUILD_TYPE:STRING=RelWithDebInfo" "$build_dir/CMakeCache.txt" 2>/dev/null; then
        cmake -S . -B "$build_dir" -G Ninja -DK2_CUDA=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    fi
    cmake --build "$build_dir" --target k2 "${tests[@]}" -j2
    rm -rf "$bin" "$build_dir/rt"
    mkdir -p "$bin" "$build_dir/rt"
    cp "$build_dir/k2" "$bin/"
    for t in "${tests[@]}"; do cp "$(find "$build_dir/tests" -name "$t" -type f | head -1)" "$bin/"; done
    strip "$bin"/*
    # Everything but glibc, libstdc++/libgcc and the CUDA libraries travels (the device image has those).
    for lib in $(ldd "$bin"/* | awk '/=> \// {print $3}' | sort -u); do
        case "$(basename "$lib")" in
            libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libresolv.so*|libstdc++.so*|libgcc_s.so*|libcublas*|libcudart*) ;;
            *) cp -L "$lib" "$build_dir/rt/" ;;
        esac
    done
    # The device call's upload limit (64 MiB with the tree) needs them compressed.
    tar -cJf "$build_dir/carry.tar.xz" "$bin" "$build_dir/rt"
    # Wheels of the openai-client suite for the device's Python 3.12 (its image has neither, nor an index).
    if [[ ! -d "$build_dir/wheels" ]]; then
        python3 -m pip download -q --python-version 3.12 --only-binary=:all: --platform manylinux2014_x86_64 \
            --platform any openai pytest prometheus_client -d "$build_dir/wheels"
    fi
    du -sh "$bin" "$build_dir/rt" "$build_dir/carry.tar.xz"
    exit 0
fi

[[ -d "$bin" ]] || tar -xJf "$build_dir/carry.tar.xz"
# Logs go to a work folder; at exit one tarball of them (and the summaries) goes to $OUT, whose file count is limited.
final_out="${OUT:-gpu_model_out}"
out="$PWD/gpu_model_logs"
rm -rf "$out"
mkdir -p "$out" "$final_out"
pack() {
    grep -h -B3 -A14 -E "Failure|FAILED|Error" "$out"/test_*.log "$out"/pytest_*.log 2>/dev/null | head -400 \
        >"$final_out/failures.txt" || true
    cp "$out"/*.json "$final_out/" 2>/dev/null || true
    tar -czf "$final_out/logs.tar.gz" -C "$out" .
}
trap pack EXIT
export LD_LIBRARY_PATH="$PWD/$build_dir/rt:${LD_LIBRARY_PATH:-}"
if ! ldconfig -p | grep -q libcublasLt.so.13; then
    lt="$(find / -name 'libcublasLt.so.13*' -not -path '/proc/*' 2>/dev/null | head -1 || true)"
    [[ -n "$lt" ]] && export LD_LIBRARY_PATH="$(dirname "$lt"):$LD_LIBRARY_PATH"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
date -u | tee -a "$out/gpu.txt"
export K2_SOURCE_DIR="$PWD"
status=0

wait_healthy() {  # port, seconds
    for _ in $(seq 1 "$2"); do
        curl -sf "localhost:$1/health" >/dev/null 2>&1 && return 0
        sleep 1
    done
    return 1
}

if [[ "$mode" == "check" ]]; then
    for t in "${tests[@]}"; do
        echo "== $t"
        "$bin/$t" --gtest_brief=1 >"$out/$t.log" 2>&1 || status=1
        tail -n 4 "$out/$t.log"
    done
    for t in test_model_ops test_mla_ops test_moe_ops; do
        # Kimi-K2-sized cases are left to the plain run: under memcheck they take minutes.
        timeout 120 compute-sanitizer --tool memcheck --error-exitcode 3 "$bin/$t" --gtest_brief=1 \
            --gtest_filter='-*KimiK2*:*Kimi*:*Perf*' >"$out/memcheck_$t.log" 2>&1 || status=1
        echo "memcheck $t: $(tail -n 1 "$out/memcheck_$t.log")"
    done
    # The tiny model served from the GPU: a chat request, then the API and bench suites against it.
    "$bin/k2" serve tests/fixtures/tiny-kimi-k2 --device cuda --port 8011 --max-model-len 4096 \
        >"$out/serve_tiny.log" 2>&1 &
    pid=$!
    if wait_healthy 8011 120; then
        curl -s localhost:8011/v1/chat/completions -H 'Content-Type: application/json' \
            -d '{"model":"tests/fixtures/tiny-kimi-k2","messages":[{"role":"user","content":"Hi"}],"max_tokens":16}' \
            | tee "$out/chat_tiny.json"
        echo
        "$bin/k2" bench serve --port 8011 --model tests/fixtures/tiny-kimi-k2 --tokenizer tests/fixtures/tiny-kimi-k2 \
            --dataset-name random --random-input-len 256 --random-output-len 64 --num-prompts 32 \
            --request-rate inf --ignore-eos >"$out/bench_tiny.log" 2>&1 || status=1
        tail -n 20 "$out/bench_tiny.log"
    else
        echo "tiny server did not come up"; status=1
    fi
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    tail -n 30 "$out/serve_tiny.log"
    # The openai-client suite against the GPU backend (where the device image has pytest and openai).
    # The device image has no openai/pytest and no package index: wheels travel in build-cuda/wheels.
    if [[ -d "$build_dir/wheels" ]]; then
        python3 -m pip install -q --no-index --find-links "$build_dir/wheels" --target /tmp/k2-pylib openai pytest \
            prometheus_client >"$out/pip.log" 2>&1 || true
        export PYTHONPATH="/tmp/k2-pylib:${PYTHONPATH:-}"
    fi
    K2_BIN="$PWD/$bin/k2" K2_TEST_SERVE_ARGS="--device cuda" timeout 300 python3 -m pytest -q tests/py/api/test_openai_api.py \
        tests/py/api/test_tools.py tests/py/api/test_lifecycle.py >"$out/pytest_api_cuda.log" 2>&1 || status=1
    tail -n 15 "$out/pytest_api_cuda.log"
    exit "$status"
fi

layers="${2:-3}"
model=/tmp/k2-synth-$layers
if [[ "$mode" == "e2e" ]]; then  # the GPU tests first (quick): a run whose kernels are wrong measures nothing
    for t in "${tests[@]}"; do
        "$bin/$t" --gtest_brief=1 >"$out/$t.log" 2>&1 || status=1
        echo "$t: $(grep -E '^\[  (PASSED|FAILED)' "$out/$t.log" | head -1)"
    done
fi
if [[ "$mode" == "profile" ]]; then  # per-layer (attention, feed-forward) times of an 8k prefill and of decode
    [[ -f "$model/config.json" ]] || "$bin/k2" synth "$model" --preset kimi-k2 --layers "$layers" >"$out/synth.log" 2>&1
    "$bin/k2" bench step "$model" --batch 16 --context 4096 --prefill-tokens 8192 --prefill-runs 2 --decode-steps 20 \
        --enforce-eager --profile-layers --output-json "$out/profile.json" >"$out/profile.log" 2>&1 || status=1
    grep -E "layer_attn_ffn_ms" -A12 "$out/profile.log" | tr -d ' \n'; echo
    tail -n 2 "$out/profile.log"
    exit "$status"
fi
if [[ ! -f "$model/config.json" ]]; then
    /usr/bin/time -v "$bin/k2" synth "$model" --preset kimi-k2 --layers "$layers" >"$out/synth.log" 2>&1
fi
du -sh "$model" | tee -a "$out/gpu.txt"
step() {  # name, args...
    local name=$1
    shift
    timeout 400 "$bin/k2" bench step "$model" --batch 16 --context 8192 --prefill-tokens 8192 "$@" \
        --output-json "$out/step_$name.json" >"$out/step_$name.log" 2>&1 || status=1
    tail -n 2 "$out/step_$name.log"
}
step "L${layers}_graphs"
step "L$((layers - 1))_graphs" --layers $((layers - 1)) --prefill-runs 1
step "L${layers}_eager" --enforce-eager --profile-layers --prefill-runs 2
step "L${layers}_fp8" --kv-cache-dtype fp8 --prefill-runs 1 --decode-steps 10

# The seed's workloads through the server (vllm.md §4 flags): H200 (8000 in / 1000 out, 16 prompts, rate 10000)
# and H800 (1000 in / 512 out, 8 prompts, rate 1).
"$bin/k2" serve "$model" --device cuda --port 8012 --max-model-len 10240 --max-num-seqs 16 \
    --max-num-batched-tokens 8192 --gpu-memory-utilization 0.9 --disable-log-requests >"$out/serve_e2e.log" 2>&1 &
pid=$!
if wait_healthy 8012 240; then
    bench() {  # name, input, output, prompts, rate
        timeout 300 "$bin/k2" bench serve --port 8012 --model "$model" --tokenizer "$model" --dataset-name random \
            --random-input-len "$2" --random-output-len "$3" --num-prompts "$4" --request-rate "$5" --ignore-eos \
            --save-result --result-dir "$out" --result-filename "bench_$1.json" >"$out/bench_$1.log" 2>&1 || status=1
        cat "$out/bench_$1.log" | tail -n 30
    }
    bench h200 8000 1000 16 10000
    bench h800 1000 512 8 1
else
    echo "e2e server did not come up"; status=1
fi
kill -TERM "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
grep -E "GPU KV cache|Maximum concurrency|CUDA model|Loading weights took" "$out/serve_e2e.log" || true

# transformers' eager DeepseekV3 on the same config (bf16 weights, random; the reference point of issue 8).
timeout 300 python3 bench/hf_decode_step.py --model "$model" --device cuda --batch 16 --context 8192 --steps 5 \
    --warmup 2 --prefill-tokens 8192 --out "$out/hf_decode_step.json" >"$out/hf_decode_step.log" 2>&1 || status=1
tail -n 12 "$out/hf_decode_step.log"
exit "$status"

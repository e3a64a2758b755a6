#!/usr/bin/env bash
# The non-absorbed MLA prefill attention (src/backend/cuda/mla_prefill.h) in one device call.
#
#   bench/gpu_mla_prefill.sh build    # here: builds test_mla_prefill, test_cuda_model and k2 in build-mla/ and packs
#                                     # build-mla/carry.tar.xz (stripped binaries + the libraries the device lacks)
#   bench/gpu_mla_prefill.sh device   # on the GPU (carry build-mla/carry.tar.xz): the op tests, compute-sanitizer
#                                     # memcheck + racecheck on the small cases, the 8k benchmark with the absorbed
#                                     # kernel as the baseline (numbers in docs/perf/kernels.md); then the model:
#                                     # test_cuda_model, and on a 1-layer synthetic Kimi-K2 the logits of a 300-token
#                                     # prompt with the prefill path on and off (K2_DISABLE_MLA_PREFILL) and an 8k
#                                     # prefill timed both ways (k2 bench step)
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir="${K2_MLA_BUILD_DIR:-build-mla}"
if [[ "${1:-device}" == "build" ]]; then
    [[ -f "$build_dir/CMakeCache.txt" ]] || cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$build_dir" --target test_mla_prefill test_cuda_model k2 -j2
    rm -rf "$build_dir/carry"
    mkdir -p "$build_dir/carry/rt"
    cp "$build_dir/tests/ops/test_mla_prefill" "$build_dir/tests/model/test_cuda_model" "$build_dir/k2" "$build_dir/carry/"
    strip "$build_dir/carry/test_mla_prefill" "$build_dir/carry/test_cuda_model" "$build_dir/carry/k2"
    for lib in $(ldd "$build_dir"/carry/test_* "$build_dir/carry/k2" | awk '/=> \// {print $3}' | sort -u); do
        case "$(basename "$lib")" in
            libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libstdc++.so*|libgcc_s.so*|libcublas*) ;;
            *) cp -L "$lib" "$build_dir/carry/rt/" ;;
        esac
    done
    tar -cJf "$build_dir/carry.tar.xz" -C "$build_dir" carry
    ls -la "$build_dir/carry.tar.xz"
    exit 0
fi
work=/tmp/mla_prefill_carry
rm -rf "$work" && mkdir -p "$work" && tar -xJf "$build_dir/carry.tar.xz" -C "$work"
export LD_LIBRARY_PATH="$work/carry/rt:${LD_LIBRARY_PATH:-}"
if ! ldconfig -p | grep -q libcublasLt.so.13; then
    lt="$(find / -name 'libcublasLt.so.13*' -not -path '/proc/*' 2>/dev/null | head -1 || true)"
    [[ -n "$lt" ]] && export LD_LIBRARY_PATH="$(dirname "$lt"):$LD_LIBRARY_PATH"
fi
bin="$work/carry/test_mla_prefill"
out="${OUT:-/tmp/mla_prefill_out}"
mkdir -p "$out"
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
date -u
"$bin" --gtest_brief=1 >"$out/tests.log" 2>&1 || status=1
tail -n 25 "$out/tests.log"
timeout 200 compute-sanitizer --tool memcheck --error-exitcode 3 "$bin" --gtest_brief=1 \
    >"$out/memcheck.log" 2>&1 || status=1
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' "$out/memcheck.log" | tr '\n' ' ')"
timeout 200 compute-sanitizer --tool racecheck --error-exitcode 3 "$bin" --gtest_brief=1 \
    --gtest_filter='*FewHeads*:*DeepSeek*:*Empty*' >"$out/racecheck.log" 2>&1 || status=1
echo "racecheck: $(grep -E 'HAZARD|RACECHECK SUMMARY|PASSED|FAILED' "$out/racecheck.log" | sort | uniq -c | tr '\n' ' ')"
"$bin" --gtest_also_run_disabled_tests --gtest_filter='*Perf*' >"$out/perf.log" 2>&1 || status=1
cuobjdump -sass "$bin" 2>/dev/null | awk '/Function :/ {f=$0} /HMMA|LDSM|LDL|STL/ {split($2, a, "."); n[f" "a[1]]++} END {for (k in n) if (k ~ /prefill/) print n[k], k}' || true
grep -vE '^\[ *(RUN|OK|==|--)' "$out/perf.log" | tail -n 20
[[ "${2:-}" == "ops" ]] && exit "$status"

# The model: the goldens test (fixtures: their head dims keep the absorbed path), then a 1-layer Kimi-K2.
export K2_SOURCE_DIR="$PWD"
"$work/carry/test_cuda_model" --gtest_brief=1 >"$out/cuda_model.log" 2>&1 || status=1
echo "test_cuda_model: $(grep -E '^\[  (PASSED|FAILED)' "$out/cuda_model.log" | tr '\n' ' ')"
k2="$work/carry/k2"
model=/tmp/k2-synth-mla
timeout 300 "$k2" synth "$model" --preset kimi-k2 --layers 1 >"$out/synth.log" 2>&1 || { echo "synth failed"; tail -5 "$out/synth.log"; exit 1; }
ids=$(python3 -c "print(','.join(str((i * 7919) % 150000 + 10) for i in range(300)))")
timeout 120 "$k2" logits "$model" --token-ids "$ids" --output /tmp/logits_on.bin --device cuda >"$out/logits_on.log" 2>&1 || status=1
K2_DISABLE_MLA_PREFILL=1 timeout 120 "$k2" logits "$model" --token-ids "$ids" --output /tmp/logits_off.bin \
    --device cuda >"$out/logits_off.log" 2>&1 || status=1
python3 - <<'PY' || status=1
import numpy as np
on = np.fromfile("/tmp/logits_on.bin", dtype=np.float32).reshape(300, -1).astype(np.float64)
off = np.fromfile("/tmp/logits_off.bin", dtype=np.float32).reshape(300, -1).astype(np.float64)
cos = (on * off).sum(1) / np.linalg.norm(on, axis=1) / np.linalg.norm(off, axis=1)
print(f"logits prefill path vs absorbed: cosine min {cos.min():.6f} mean {cos.mean():.6f}, "
      f"argmax agree {np.mean(on.argmax(1) == off.argmax(1)) * 100:.1f}%, finite {np.isfinite(on).all()}")
raise SystemExit(0 if np.isfinite(on).all() and cos.min() > 0.999 else 1)
PY
for mode in on off; do
    env_set=""; [[ $mode == off ]] && env_set="K2_DISABLE_MLA_PREFILL=1"
    env $env_set timeout 200 "$k2" bench step "$model" --batch 1 --context 64 --prefill-tokens 8192 --prefill-runs 3 \
        --decode-steps 2 --enforce-eager --profile-layers >"$out/step_$mode.log" 2>&1 || status=1
    echo "prefill path $mode: $(grep -E '^prefill:' "$out/step_$mode.log")"
    grep -E "layer_attn_ffn_ms" -A3 "$out/step_$mode.log" | tr -d ' \n'; echo
done
exit "$status"

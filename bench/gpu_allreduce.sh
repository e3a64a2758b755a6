#!/usr/bin/env bash
# The one-shot peer-memory all-reduce vs NCCL on two GPUs (issue 10 point 4), in one device call.
#
#   bench/gpu_allreduce.sh build   # here (no GPU needed): test_p2p_allreduce, bench_p2p_allreduce and
#                                  # test_dist_nccl, stripped, with the shared libraries the device image lacks,
#                                  # packed into build-ar/carry/ar.tar.xz
#   bench/gpu_allreduce.sh run     # on the 2-GPU machine (carry build-ar/carry): the NCCL two-GPU test, the
#                                  # benchmark (Markdown table), the peer-memory all-reduce tests and the CUDA
#                                  # model's tensor parallelism over NCCL (test_cuda_model_parallel)
# Logs go to $OUT (or ./gpu_allreduce_out).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
build_dir="${K2_AR_BUILD_DIR:-build-ar}"
tools=(test_p2p_allreduce bench_p2p_allreduce test_dist_nccl test_cuda_model_parallel)

if [[ "$mode" == "build" ]]; then
    if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
        cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    fi
    cmake --build "$build_dir" --target "${tools[@]}" -j2
    carry="$build_dir/carry"
    rm -rf "$carry"
    mkdir -p "$carry/bin" "$carry/rt"
    for t in "${tools[@]}"; do cp "$(find "$build_dir/tests" -name "$t" -type f | head -1)" "$carry/bin/"; done
    strip "$carry/bin"/*
    # Everything but glibc, libstdc++/libgcc, the CUDA runtime and NCCL travels (the device image has those).
    for lib in $(ldd "$carry/bin"/* | awk '/=> \// {print $3}' | sort -u); do
        case "$(basename "$lib")" in
            libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libresolv.so*|libstdc++.so*|libgcc_s.so*|libcudart*|libnccl*|libcublas*) ;;
            *) cp -L "$lib" "$carry/rt/" ;;
        esac
    done
    tar -cJf "$carry/ar.tar.xz" -C "$carry" bin rt
    rm -rf "$carry/bin" "$carry/rt"
    du -sh "$carry/ar.tar.xz"
    exit 0
fi

work="$(mktemp -d)"
tar -xJf "$build_dir/carry/ar.tar.xz" -C "$work"
out="${OUT:-gpu_allreduce_out}"
mkdir -p "$out"
export LD_LIBRARY_PATH="$work/rt:${LD_LIBRARY_PATH:-}"
if ! ldconfig -p | grep -q 'libnccl.so.2 '; then
    nccl="$(find /usr/local /usr/lib /opt -name 'libnccl.so.2' 2>/dev/null | head -1 || true)"
    [[ -n "$nccl" ]] && export LD_LIBRARY_PATH="$(dirname "$nccl"):$LD_LIBRARY_PATH"
fi
if ! ldconfig -p | grep -q 'libcublasLt.so.13'; then  # test_cuda_model_parallel links cuBLASLt
    lt="$(find / -name 'libcublasLt.so.13*' -not -path '/proc/*' 2>/dev/null | head -1 || true)"
    [[ -n "$lt" ]] && export LD_LIBRARY_PATH="$(dirname "$lt"):$LD_LIBRARY_PATH"
fi
export K2_SOURCE_DIR="$PWD"
# NVLink multicast stays off on the shared machines.
export NCCL_NVLS_ENABLE=0
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    nvidia-smi topo -m || true
} >"$out/gpu.txt" 2>&1
status=0
timeout 90 "$work/bin/test_dist_nccl" --gtest_filter='*TwoGpus*' >"$out/test_dist_nccl.log" 2>&1 || status=1
timeout 90 "$work/bin/bench_p2p_allreduce" --calls 100 --reps 30 >"$out/bench.md" 2>"$out/bench.err" || status=1
timeout 150 "$work/bin/test_p2p_allreduce" >"$out/test_p2p_allreduce.log" 2>&1 || status=1
timeout 200 "$work/bin/test_cuda_model_parallel" >"$out/test_cuda_model_parallel.log" 2>&1 || status=1
grep -E "tp2 vs|OK \]|FAILED|SKIPPED \]" "$out/test_cuda_model_parallel.log" || true
cat "$out/gpu.txt"
tail -5 "$out/test_dist_nccl.log"
grep -E "^\[ *(OK|FAILED|SKIPPED|PASSED) *\]|rank [0-9] failed|Failure" "$out/test_p2p_allreduce.log" | head -40 || true
cat "$out/bench.md"
tail -20 "$out/bench.err"
exit "$status"

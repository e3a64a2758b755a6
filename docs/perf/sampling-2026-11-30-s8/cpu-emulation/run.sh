#!/usr/bin/env bash
# CPU emulation of kernels/sampling_filter.cuh (no GPU here): the kernel's own source compiled by g++ with
# cuda_runtime_shim.h (512 std::threads per block, std::barrier for __syncthreads, a per-warp barrier and exchange
# buffer for shuffles and ballots, std::atomic_ref for atomics) and compared with the host sampler (draw_sampled).
# It checks the algorithm and the block-level logic, not timing, memory errors or real races (compute-sanitizer does
# that on the device: bench/sampling_s8.sh). Usage (from the repository root, after building k2_core in BUILD):
#   BUILD=build-sampling bash docs/perf/sampling-2026-11-30-s8/cpu-emulation/run.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../../../.." && pwd)"
here="$root/docs/perf/sampling-2026-11-30-s8/cpu-emulation"
work=$(mktemp -d)
mkdir -p "$work/include"
cp "$here/cuda_runtime_shim.h" "$work/include/cuda_runtime.h"
for main in emu_main ties_main; do
  g++ -std=c++20 -O1 -I"$work/include" -I"$root/src" -DFMT_SHARED "$here/$main.cpp" "$root/src/engine/sampler.cpp" \
    "$root/${BUILD:-build-sampling}/src/core/libk2_core.a" -lfmt -lpthread -o "$work/$main"
done
for v in 1 3 1000 5000 163840; do "$work/emu_main" $v | grep -v '^row'; done        # random rows, 4 data variants
for v in 5000 20000 163840; do "$work/emu_main" $v flat | grep -v '^row'; done      # flat rows: row paths, ties
"$work/ties_main"                                                                  # test_sampling's ties case

// Grouped weight-streaming FP8 GEMM for MoE decode: fp8_gemm_decode.cuh's warp tile (16 weight rows x 8 tokens per
// mma.sync m16n8k32 e4m3, weights loaded straight from global memory into fragments) run per expert.
//
// grid: [n / 64, num_experts], block: 128 threads (4 warps x 16 rows of n). A block reads its expert's row range
// from offsets and returns at once when it is empty; otherwise each warp loops over all of k (no split-K, so no
// cluster and no shared memory) for passes of up to 8 * kMaxTiles rows, and picks the token-tile count of each pass
// from the expert's own row count (most decode experts get 1-2 rows: one tile, the memory-bound case of the dense
// kernel, whatever max_rows_per_expert is).
//
// Cost at Kimi-K2 decode, 16 tokens, top-8 of 384 experts: uniform routing touches ~384 * (1 - (1 - 8/384)^16)
// ~ 110 experts (at most 128). gate_up (n 4096, k 7168): 29.4 MB of e4m3 weights per expert -> ~3.2 GB
// (<= 3.76 GB) -> ~0.81 ms (<= 0.94 ms) at 4 TB/s; down (n 7168, k 2048): 14.7 MB per expert -> ~1.6 GB -> ~0.40 ms.
// Activations, scales and outputs are < 2 MB. The empty experts cost a block launch each (n / 64 * 384 blocks,
// ~2/3 of them empty), a few microseconds. Without split-K a touched expert has n / 64 blocks (64 or 112) x 4 warps
// streaming 4 stages of 2 KiB each: ~110 experts fill the H200; 1 token (8 experts, 512 blocks) is thinner.
#pragma once

#include <cuda_bf16.h>

#include <type_traits>

#include "backend/cuda/kernels/fp8_gemm_decode.cuh"
#include "backend/cuda/kernels/sm90_ptx.cuh"
#include "backend/cuda/moe_ops.h"
#include "backend/cuda/moe_ops_detail.h"

namespace k2::cuda::kernels {

__device__ __forceinline__ void store_bf16(uint16_t* ptr, float v) {
    const __nv_bfloat16 out = __float2bfloat16(v);
    *ptr = reinterpret_cast<const uint16_t&>(out);
}

// One warp: 16 rows of n starting at warp_row (inside one 128-row scale block) x g.num_tokens <= 8 * kTiles tokens,
// the k blocks [kb_begin, kb_end) summed into acc; g is one expert's pass as a plain GEMM (x_stride k, x_scale_stride
// n_e, y_stride n). Same k loop and per-k-block scale promotion as fp8_gemm_decode_kernel. l2_ahead > 0: every 8 k
// blocks, each of the 16 weight rows gets a bulk L2 prefetch of its next 1 KB starting l2_ahead k blocks past the
// loads (a contiguous run per row, where the loads themselves take one 128-byte line per row and step); it changes
// no result.
template <int kTiles>
__device__ __forceinline__ void warp_k_range(const Fp8GemmParams& g, int64_t warp_row, int lane, int kb_begin,
                                             int kb_end, int l2_ahead, float (&acc)[kTiles][4]) {
    constexpr int kStages = kTiles >= 8 ? 2 : 4;
    const int group = lane >> 2;
    const int quad_lane = lane & 3;
    const int num_kb = static_cast<int>(g.k / 128);
    const uint8_t* w_row = g.w + (warp_row + group) * g.k + quad_lane * 16;
    const int64_t row8 = 8 * g.k;
    const float* w_scale = g.w_scale + (warp_row / 128) * num_kb;
    uint4 wbuf[kStages][4];
    auto load_w = [&](uint4(&dst)[4], int kb) {
        const uint8_t* ptr = w_row + kb * 128;
        dst[0] = load_stream(ptr);
        dst[1] = load_stream(ptr + 64);
        dst[2] = load_stream(ptr + row8);
        dst[3] = load_stream(ptr + row8 + 64);
    };
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
        if (kb_begin + s < kb_end) {
            load_w(wbuf[s], kb_begin + s);
        }
    }
    for (int kb0 = kb_begin; kb0 < kb_end; kb0 += kStages) {
        const int ahead = kb0 + l2_ahead;
        if (l2_ahead > 0 && (kb0 - kb_begin) % 8 == 0 && ahead < kb_end && lane < 16) {  // lane: row warp_row + lane
            const uint8_t* row = g.w + (warp_row + lane) * g.k;
            sm90::prefetch_l2_bulk(row + ahead * 128, static_cast<uint32_t>(min(8, kb_end - ahead) * 128));
        }
#pragma unroll
        for (int s = 0; s < kStages; ++s) {
            const int kb = kb0 + s;
            if (kb < kb_end) {
                float part[kTiles][4] = {};
                mma_k_block<kTiles>(wbuf[s], g, kb, lane, part);
                if (kb + kStages < kb_end) {
                    load_w(wbuf[s], kb + kStages);
                }
                const float ws = w_scale[kb];
                const float* xs = g.x_scale + kb * g.x_scale_stride;
#pragma unroll
                for (int t = 0; t < kTiles; ++t) {
                    const int token = t * 8 + quad_lane * 2;
                    const float s0 = token < g.num_tokens ? xs[token] * ws : 0.0f;
                    const float s1 = token + 1 < g.num_tokens ? xs[token + 1] * ws : 0.0f;
                    acc[t][0] += part[t][0] * s0;
                    acc[t][1] += part[t][1] * s1;
                    acc[t][2] += part[t][2] * s0;
                    acc[t][3] += part[t][3] * s1;
                }
            }
        }
    }
}

// The warp's 16 rows x g.num_tokens of acc as bf16 into g.y.
template <int kTiles>
__device__ __forceinline__ void store_warp_rows(const Fp8GemmParams& g, int64_t warp_row, int lane,
                                                const float (&acc)[kTiles][4]) {
    // mma C fragment: [0]/[1] = row group, tokens 2q and 2q + 1; [2]/[3] = row group + 8.
    const int64_t row = warp_row + (lane >> 2);
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
        const int token = t * 8 + (lane & 3) * 2;
        if (token < g.num_tokens) {
            store_bf16(g.y + token * g.y_stride + row, acc[t][0]);
            store_bf16(g.y + token * g.y_stride + row + 8, acc[t][2]);
        }
        if (token + 1 < g.num_tokens) {
            store_bf16(g.y + (token + 1) * g.y_stride + row, acc[t][1]);
            store_bf16(g.y + (token + 1) * g.y_stride + row + 8, acc[t][3]);
        }
    }
}

// Expert `expert` (rows [row_begin, row_begin + num_rows)) as a plain GEMM, in passes of up to 8 * kMaxTiles rows;
// fn(tiles, pass) runs each pass with the token-tile count picked from the pass's own row count (an
// std::integral_constant). kMaxTiles in {1, 2, 4, 8}: ceil(min(max_rows_per_expert, 64) / 8) rounded up to a power of
// two; it only bounds the pass size (an expert with more rows takes more passes), so correctness never depends on
// the host bound.
template <int kMaxTiles, class PassFn>
__device__ __forceinline__ void for_each_pass(const Fp8GroupedGemmParams& p, int expert, int64_t row_begin,
                                              int num_rows, PassFn&& fn) {
    const int64_t num_kb = p.k / 128;
    Fp8GemmParams g;
    g.x = p.x + row_begin * p.k;
    g.x_scale = p.x_scale + row_begin * num_kb;
    g.w = p.w + static_cast<int64_t>(expert) * p.n * p.k;
    g.w_scale = p.w_scale + static_cast<int64_t>(expert) * (p.n / 128) * num_kb;
    g.y = p.y + row_begin * p.n;
    g.n = p.n;
    g.k = p.k;
    g.x_stride = p.k;
    g.x_scale_stride = num_rows;
    g.y_stride = p.n;
    constexpr int kPassRows = kMaxTiles * 8;
    for (int begin = 0; begin < num_rows; begin += kPassRows) {
        Fp8GemmParams pass = g;
        pass.num_tokens = min(num_rows - begin, kPassRows);
        pass.x = g.x + static_cast<int64_t>(begin) * p.k;
        pass.x_scale = g.x_scale + begin;
        pass.y = g.y + static_cast<int64_t>(begin) * p.n;
        const int tiles = static_cast<int>((pass.num_tokens + 7) / 8);
        if constexpr (kMaxTiles >= 8) {
            if (tiles > 4) {
                fn(std::integral_constant<int, 8>{}, pass);
                continue;
            }
        }
        if constexpr (kMaxTiles >= 4) {
            if (tiles > 2) {
                fn(std::integral_constant<int, 4>{}, pass);
                continue;
            }
        }
        if constexpr (kMaxTiles >= 2) {
            if (tiles > 1) {
                fn(std::integral_constant<int, 2>{}, pass);
                continue;
            }
        }
        fn(std::integral_constant<int, 1>{}, pass);
    }
}

// One warp's 16 rows (warp_row..) of one expert with rows [row_begin, row_begin + num_rows), all of k.
template <int kMaxTiles>
__device__ __forceinline__ void expert_warp_row(const Fp8GroupedGemmParams& p, int expert, int64_t row_begin,
                                                int num_rows, int64_t warp_row, int lane, int l2_ahead) {
    for_each_pass<kMaxTiles>(p, expert, row_begin, num_rows, [&](auto tiles, const Fp8GemmParams& pass) {
        constexpr int kTiles = decltype(tiles)::value;
        float acc[kTiles][4] = {};
        warp_k_range<kTiles>(pass, warp_row, lane, 0, static_cast<int>(p.k / 128), l2_ahead, acc);
        store_warp_rows<kTiles>(pass, warp_row, lane, acc);
    });
}

// The same 16 rows with k split over the block's 4 warps (warp w: the w-th quarter of the k blocks): the partial
// sums meet in red ([4 warps][32 lanes][kMaxTiles * 4] f32) and warp 0 adds them in warp order, so the result is
// deterministic (but rounded differently from expert_warp_row's single sum). Every warp of the block calls it.
template <int kMaxTiles>
__device__ __forceinline__ void expert_block_row(const Fp8GroupedGemmParams& p, int expert, int64_t row_begin,
                                                 int num_rows, int64_t warp_row, int warp, int lane, int l2_ahead,
                                                 float* red) {
    const int num_kb = static_cast<int>(p.k / 128);
    const int kb_begin = warp * num_kb / kDecodeWarps;
    const int kb_end = (warp + 1) * num_kb / kDecodeWarps;
    for_each_pass<kMaxTiles>(p, expert, row_begin, num_rows, [&](auto tiles, const Fp8GemmParams& pass) {
        constexpr int kTiles = decltype(tiles)::value;
        float acc[kTiles][4] = {};
        warp_k_range<kTiles>(pass, warp_row, lane, kb_begin, kb_end, l2_ahead, acc);
        float* mine = red + (warp * 32 + lane) * (kTiles * 4);
#pragma unroll
        for (int t = 0; t < kTiles; ++t) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                mine[t * 4 + j] = acc[t][j];
            }
        }
        __syncthreads();
        if (warp == 0) {
#pragma unroll
            for (int t = 0; t < kTiles; ++t) {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    float sum = 0.0f;
#pragma unroll
                    for (int w = 0; w < kDecodeWarps; ++w) {
                        sum += red[(w * 32 + lane) * (kTiles * 4) + t * 4 + j];
                    }
                    acc[t][j] = sum;
                }
            }
            store_warp_rows<kTiles>(pass, warp_row, lane, acc);
        }
        __syncthreads();  // red is rewritten by the next pass
    });
}

// grid [n / 64, num_experts]: one block per 64 rows of n per expert; blocks of experts without rows exit at once.
template <int kMaxTiles>
__global__ void __launch_bounds__(kDecodeThreads)
    fp8_grouped_gemm_decode_kernel(const __grid_constant__ Fp8GroupedGemmParams p) {
    const int expert = static_cast<int>(blockIdx.y);
    const int64_t row_begin = p.offsets[expert];
    const int num_rows = p.offsets[expert + 1] - p.offsets[expert];
    if (num_rows <= 0) {
        return;
    }
    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int lane = static_cast<int>(threadIdx.x) % 32;
    // n % 128 == 0: every warp's 16 rows are valid and a block's 64 rows share one scale block.
    const int64_t warp_row = static_cast<int64_t>(blockIdx.x) * kDecodeRowsPerBlock + warp * kDecodeRowsPerWarp;
    expert_warp_row<kMaxTiles>(p, expert, row_begin, num_rows, warp_row, lane, 0);
}

// The experts with rows, in expert order, into touched[0, return): every thread of the block scans 4 of them, a
// block-wide exclusive scan of the counts places them. Needs blockDim.x == kDecodeThreads (4 x 128 = 512 experts).
__device__ __forceinline__ int list_touched_experts(const int32_t* offsets, int num_experts, int* touched,
                                                    int* warp_counts) {
    static_assert(kDecodeThreads * 4 == detail::kMoeMaxExperts);
    const int tid = static_cast<int>(threadIdx.x);
    const int lane = tid % 32;
    const int warp = tid / 32;
    int mine[4];
    int count = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int e = tid * 4 + i;
        mine[i] = e < num_experts && offsets[e + 1] > offsets[e] ? 1 : 0;
        count += mine[i];
    }
    int prefix = count;  // inclusive scan inside the warp
#pragma unroll
    for (int d = 1; d < 32; d *= 2) {
        const int other = __shfl_up_sync(0xFFFFFFFFu, prefix, d);
        prefix += lane >= d ? other : 0;
    }
    if (lane == 31) {
        warp_counts[warp] = prefix;
    }
    __syncthreads();
    int at = prefix - count;
    for (int w = 0; w < warp; ++w) {
        at += warp_counts[w];
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        if (mine[i] != 0) {
            touched[at++] = tid * 4 + i;
        }
    }
    const int total = warp_counts[0] + warp_counts[1] + warp_counts[2] + warp_counts[3];
    __syncthreads();
    return total;
}

// Persistent form: grid = the blocks that fit on the GPU at once. The (expert with rows, 16-row slice of n) pairs,
// touched experts in order, are dealt to the warps in equal contiguous ranges, so every warp streams about the same
// bytes (a contiguous run of weight rows) and all finish together: no block per empty expert and no tail of long
// blocks started late. A warp-row's result is computed exactly as by fp8_grouped_gemm_decode_kernel (same passes,
// same order of k): the outputs are bitwise equal.
template <int kMaxTiles>
__global__ void __launch_bounds__(kDecodeThreads)
    fp8_grouped_gemm_decode_persistent_kernel(const __grid_constant__ Fp8GroupedGemmParams p, int l2_ahead) {
    __shared__ int touched[detail::kMoeMaxExperts];
    __shared__ int warp_counts[kDecodeWarps];
    const int num_touched = list_touched_experts(p.offsets, p.num_experts, touched, warp_counts);
    const int64_t slices = p.n / kDecodeRowsPerWarp;  // per expert
    const int64_t total = num_touched * slices;
    const int64_t warps = static_cast<int64_t>(gridDim.x) * kDecodeWarps;
    const int64_t w = static_cast<int64_t>(blockIdx.x) * kDecodeWarps + threadIdx.x / 32;
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int64_t end = (w + 1) * total / warps;
    for (int64_t item = w * total / warps; item < end; ++item) {
        const int expert = touched[item / slices];
        const int64_t row_begin = p.offsets[expert];
        const int num_rows = p.offsets[expert + 1] - p.offsets[expert];
        expert_warp_row<kMaxTiles>(p, expert, row_begin, num_rows, (item % slices) * kDecodeRowsPerWarp, lane,
                                   l2_ahead);
    }
}

// The k-split form, for few touched experts (e.g. one token's 8, or an EP rank's share: then dealing whole slices
// leaves most warps idle or one slice short of the busiest): the slices are dealt to blocks, and a block's 4 warps
// each stream a quarter of every slice's k (expert_block_row). kMaxTiles <= 2 (the launcher picks it for small
// batches only).
template <int kMaxTiles>
__global__ void __launch_bounds__(kDecodeThreads)
    fp8_grouped_gemm_decode_split_kernel(const __grid_constant__ Fp8GroupedGemmParams p, int l2_ahead) {
    static_assert(kMaxTiles <= 2, "the split form serves small batches");
    __shared__ int touched[detail::kMoeMaxExperts];
    __shared__ int warp_counts[kDecodeWarps];
    __shared__ float red[kDecodeWarps * 32 * kMaxTiles * 4];
    const int num_touched = list_touched_experts(p.offsets, p.num_experts, touched, warp_counts);
    const int64_t slices = p.n / kDecodeRowsPerWarp;  // per expert
    const int64_t total = num_touched * slices;
    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int64_t end = (blockIdx.x + 1) * total / gridDim.x;
    for (int64_t item = blockIdx.x * total / gridDim.x; item < end; ++item) {
        const int expert = touched[item / slices];
        const int64_t row_begin = p.offsets[expert];
        const int num_rows = p.offsets[expert + 1] - p.offsets[expert];
        expert_block_row<kMaxTiles>(p, expert, row_begin, num_rows, (item % slices) * kDecodeRowsPerWarp, warp, lane,
                                    l2_ahead, red);
    }
}

}  // namespace k2::cuda::kernels

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

#include "backend/cuda/kernels/fp8_gemm_decode.cuh"
#include "backend/cuda/moe_ops.h"

namespace k2::cuda::kernels {

__device__ __forceinline__ void store_bf16(uint16_t* ptr, float v) {
    const __nv_bfloat16 out = __float2bfloat16(v);
    *ptr = reinterpret_cast<const uint16_t&>(out);
}

// One warp: 16 rows of n starting at warp_row (inside one 128-row scale block) x g.num_tokens <= 8 * kTiles tokens,
// all of k; g is one expert's pass as a plain GEMM (x_stride k, x_scale_stride n_e, y_stride n). Same k loop and
// per-k-block scale promotion as fp8_gemm_decode_kernel.
template <int kTiles>
__device__ __forceinline__ void grouped_warp_pass(const Fp8GemmParams& g, int64_t warp_row, int lane) {
    constexpr int kStages = kTiles >= 8 ? 2 : 4;
    const int group = lane >> 2;
    const int quad_lane = lane & 3;
    const int num_kb = static_cast<int>(g.k / 128);
    const uint8_t* w_row = g.w + (warp_row + group) * g.k + quad_lane * 16;
    const int64_t row8 = 8 * g.k;
    const float* w_scale = g.w_scale + (warp_row / 128) * num_kb;
    float acc[kTiles][4] = {};
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
        if (s < num_kb) {
            load_w(wbuf[s], s);
        }
    }
    for (int kb0 = 0; kb0 < num_kb; kb0 += kStages) {
#pragma unroll
        for (int s = 0; s < kStages; ++s) {
            const int kb = kb0 + s;
            if (kb < num_kb) {
                float part[kTiles][4] = {};
                mma_k_block<kTiles>(wbuf[s], g, kb, lane, part);
                if (kb + kStages < num_kb) {
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
    // mma C fragment: [0]/[1] = row group, tokens 2q and 2q + 1; [2]/[3] = row group + 8.
    const int64_t row = warp_row + group;
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
        const int token = t * 8 + quad_lane * 2;
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

// kMaxTiles in {1, 2, 4, 8}: ceil(min(max_rows_per_expert, 64) / 8) rounded up to a power of two; it only bounds
// the pass size (an expert with more rows takes more passes), so correctness never depends on the host bound.
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
    const int64_t num_kb = p.k / 128;
    Fp8GemmParams g;  // this expert as a plain GEMM over its rows
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
                grouped_warp_pass<8>(pass, warp_row, lane);
                continue;
            }
        }
        if constexpr (kMaxTiles >= 4) {
            if (tiles > 2) {
                grouped_warp_pass<4>(pass, warp_row, lane);
                continue;
            }
        }
        if constexpr (kMaxTiles >= 2) {
            if (tiles > 1) {
                grouped_warp_pass<2>(pass, warp_row, lane);
                continue;
            }
        }
        grouped_warp_pass<1>(pass, warp_row, lane);
    }
}

}  // namespace k2::cuda::kernels

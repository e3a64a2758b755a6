// Weight-streaming FP8 block-scaled GEMM for decode (<= 64 tokens per launch).
//
// Computes y^T = w . x^T with mma.sync m16n8k32 e4m3: the weights are the 16-row A operand, 8 tokens the B operand.
// A dot product does not care in which order k is summed, so as long as A and B use the same permutation of k,
// each lane may load 16 contiguous bytes of its weight row and of its token row straight from global memory into
// mma fragments: no shared memory and no layout shuffles on the weight path. A warp owns 16 rows, a block of 4
// warps 64 rows (inside one 128-row scale block), a cluster of `splits` blocks along y splits K; the partial sums
// meet in block-local shared memory and are reduced through distributed shared memory (no global workspace, no
// atomics, deterministic).
//
// Measured (docs/perf/kernels.md): from 16 tokens on it is flat at ~60-70 TFLOP/s (sm_90 has no native e4m3
// mma.sync; by the numbers it runs converted, the SASS was not inspected), so the kernel streams weights well only
// for <= 8 tokens (one token tile): 2.4-3.1 TB/s on the large Kimi-K2 projections, ahead of or even with cuBLASLt's
// (16-padded) block-scaled GEMM at m = 1 on 7 of 9 shapes. Three wgmma rewrites (docs/perf/history/) were correct but slower
// or latency-bound; the runner gives cuBLASLt every m >= 16.
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>

#include "backend/cuda/fp8_gemm.h"

namespace k2::cuda::kernels {

inline constexpr int kDecodeWarps = 4;
inline constexpr int kDecodeThreads = kDecodeWarps * 32;
inline constexpr int kDecodeRowsPerWarp = 16;
inline constexpr int kDecodeRowsPerBlock = kDecodeWarps * kDecodeRowsPerWarp;

__device__ __forceinline__ uint4 load_stream(const uint8_t* ptr) {
    // Weights are read exactly once: keep them out of L1 so the (re-read) activations stay there.
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(ptr));
    return v;
}

__device__ __forceinline__ uint4 load_cached(const uint8_t* ptr) { return __ldg(reinterpret_cast<const uint4*>(ptr)); }

__device__ __forceinline__ void mma_e4m3(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// One 128-wide k block of 16 rows x (8 * kTiles) tokens. w: [0] row g bytes 0..15 of this lane's 32-byte share,
// [1] row g bytes 64.., [2]/[3] the same for row g + 8 (g = lane / 4).
template <int kTiles>
__device__ __forceinline__ void mma_k_block(const uint4 (&w)[4], const Fp8GemmParams& p, int kb, int lane,
                                            float (&part)[kTiles][4]) {
    const int group = lane >> 2;
    const int quad_lane = lane & 3;
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
        const int token = t * 8 + group;
        uint4 xa = make_uint4(0, 0, 0, 0);
        uint4 xb = xa;
        if (token < p.num_tokens) {
            const uint8_t* x_ptr = p.x + token * p.x_stride + kb * 128 + quad_lane * 16;
            xa = load_cached(x_ptr);
            xb = load_cached(x_ptr + 64);
        }
        mma_e4m3(part[t], w[0].x, w[2].x, w[0].y, w[2].y, xa.x, xa.y);
        mma_e4m3(part[t], w[0].z, w[2].z, w[0].w, w[2].w, xa.z, xa.w);
        mma_e4m3(part[t], w[1].x, w[3].x, w[1].y, w[3].y, xb.x, xb.y);
        mma_e4m3(part[t], w[1].z, w[3].z, w[1].w, w[3].w, xb.z, xb.w);
    }
}

// grid: [ceil(n / 64), splits], cluster: [1, splits], block: 128 threads. kTiles = ceil(num_tokens / 8) <= 8.
template <int kTiles, int kStages>
__global__ void __launch_bounds__(kDecodeThreads) fp8_gemm_decode_kernel(const __grid_constant__ Fp8GemmParams p,
                                                                         int kb_per_split) {
    namespace cg = cooperative_groups;
    constexpr int kTokens = kTiles * 8;
    constexpr int kRedStride = kTokens + 1;  // odd: the row-wise reads of the reduction are conflict-free
    __shared__ float red[kDecodeRowsPerBlock * kRedStride];

    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int group = lane >> 2;
    const int quad_lane = lane & 3;
    const int num_kb = static_cast<int>(p.k / 128);
    const int kb_begin = blockIdx.y * kb_per_split;
    const int kb_end = min(num_kb, kb_begin + kb_per_split);
    const int64_t warp_row = static_cast<int64_t>(blockIdx.x) * kDecodeRowsPerBlock + warp * kDecodeRowsPerWarp;

    float acc[kTiles][4] = {};
    if (warp_row < p.n) {  // n % 16 == 0: a warp's 16 rows are all valid or all past the end
        const uint8_t* w_row = p.w + (warp_row + group) * p.k + quad_lane * 16;
        const int64_t row8 = 8 * p.k;
        const float* w_scale = p.w_scale + (warp_row / 128) * num_kb;
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
#pragma unroll
            for (int s = 0; s < kStages; ++s) {
                const int kb = kb0 + s;
                if (kb < kb_end) {
                    float part[kTiles][4] = {};
                    mma_k_block<kTiles>(wbuf[s], p, kb, lane, part);
                    if (kb + kStages < kb_end) {
                        load_w(wbuf[s], kb + kStages);
                    }
                    // Promote the block's partial sums with both scales (DeepGEMM's fp32 promotion per k block).
                    const float ws = w_scale[kb];
#pragma unroll
                    for (int t = 0; t < kTiles; ++t) {
                        const int token = t * 8 + quad_lane * 2;
                        const float* xs = p.x_scale + kb * p.x_scale_stride;
                        const float s0 = token < p.num_tokens ? xs[token] * ws : 0.0f;
                        const float s1 = token + 1 < p.num_tokens ? xs[token + 1] * ws : 0.0f;
                        acc[t][0] += part[t][0] * s0;
                        acc[t][1] += part[t][1] * s1;
                        acc[t][2] += part[t][2] * s0;
                        acc[t][3] += part[t][3] * s1;
                    }
                }
            }
        }
    }

    // Partial sums -> shared memory: red[row][token], rows local to this block.
    const int row = warp * kDecodeRowsPerWarp + group;
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
        const int token = t * 8 + quad_lane * 2;
        red[row * kRedStride + token] = acc[t][0];
        red[row * kRedStride + token + 1] = acc[t][1];
        red[(row + 8) * kRedStride + token] = acc[t][2];
        red[(row + 8) * kRedStride + token + 1] = acc[t][3];
    }
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();

    // Block `rank` of the cluster sums its share of the 64 x num_tokens outputs over every block's shared memory.
    const int num_ranks = static_cast<int>(cluster.num_blocks());
    const int rank = static_cast<int>(cluster.block_rank());
    const int tokens = static_cast<int>(p.num_tokens < kTokens ? p.num_tokens : kTokens);
    const int num_out = kDecodeRowsPerBlock * tokens;
    const int per_rank = (num_out + num_ranks - 1) / num_ranks;
    const int out_end = min(num_out, (rank + 1) * per_rank);
    for (int idx = rank * per_rank + threadIdx.x; idx < out_end; idx += kDecodeThreads) {
        const int token = idx / kDecodeRowsPerBlock;
        const int out_row = idx % kDecodeRowsPerBlock;
        float sum = 0.0f;
        for (int q = 0; q < num_ranks; ++q) {
            sum += cluster.map_shared_rank(red, q)[out_row * kRedStride + token];
        }
        const int64_t n = static_cast<int64_t>(blockIdx.x) * kDecodeRowsPerBlock + out_row;
        if (n < p.n) {
            const __nv_bfloat16 out = __float2bfloat16(sum);
            p.y[token * p.y_stride + n] = reinterpret_cast<const uint16_t&>(out);
        }
    }
    cluster.sync();  // nobody may leave while a peer still reads its shared memory
}

}  // namespace k2::cuda::kernels

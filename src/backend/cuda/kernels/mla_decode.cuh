// Kernels of mla_decode.h. Split kernel: one CTA (8 warps) per (split, sequence, 64-head group); the 64 x 576 query
// tile and two 64-token cache pages live in shared memory (cp.async, double-buffered; rows past seq_len are
// zero-filled, never read from the cache; 16-byte units XOR-swizzled by row so ldmatrix is conflict-free without
// padding). Warps w and w + 4 own heads 16 (w % 4)..: per page, each computes S = Q K^T for its 32 tokens
// (32 (w / 4)..), the pair agrees on the row max through shared memory, and P (bf16) is shared so that each warp
// does O += P V over all 64 tokens for its 256 dims (256 (w / 4)..), mma.sync m16n8k16 bf16 (native HMMA on sm_90).
// Unnormalized O, the running max m and sum l go to the workspace; the combine kernel merges the splits with their
// log-sum-exp weights. v1 computed S for all 64 tokens in both warps of a pair (13.6 instead of 8.9 MFLOP a page).
// FP8 cache (kFp8): pages arrive as e4m3 in two 36 KB staging buffers (cp.async, double-buffered, half the HBM
// bytes) and are converted once per page into the single bf16 tile the MMAs read (exact: e4m3 fits bf16); kv_scale
// multiplies the scores and, in the combine kernel, the output.
#pragma once

#include <cuda_bf16.h>

#include <cmath>

#include "backend/cuda/kernels/warp_mma.cuh"
#include "backend/cuda/mla_decode.h"

namespace k2::cuda::kernels {

inline constexpr int kMlaThreads = 256;
inline constexpr int kMlaRowBytes = kMlaEntry * 2;  // 1152
inline constexpr int kMlaTileBytes = 64 * kMlaRowBytes;
inline constexpr int kMlaPBytes = 4 * 16 * 64 * 2;   // P of the 4 warp pairs: [16 heads][64 tokens] bf16 each
inline constexpr int kMlaSmemBytes = 3 * kMlaTileBytes + kMlaPBytes + 8 * 16 * 4;  // 229,888 bytes (1 CTA per SM)

__device__ __forceinline__ void mla_cp_async16(uint32_t dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

// 64 rows x 576 bf16 from global rows (row stride src_stride elements) into a padded shared tile; rows >= valid_rows
// are zero-filled.
__device__ __forceinline__ void mla_load_tile(uint32_t dst, const uint16_t* src, int64_t src_stride, int valid_rows) {
    constexpr int kUnitsPerRow = kMlaEntry * 2 / 16;  // 72
    for (int unit = threadIdx.x; unit < 64 * kUnitsPerRow; unit += kMlaThreads) {
        const int row = unit / kUnitsPerRow;
        const int u = unit % kUnitsPerRow;
        const bool valid = row < valid_rows;
        mla_cp_async16(dst + swz(row, u, kMlaRowBytes), src + (valid ? row * src_stride + u * 8 : 0), valid ? 16 : 0);
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
}

inline constexpr int kMlaFp8RowBytes = kMlaEntry;  // 576
inline constexpr int kMlaFp8StageBytes = 64 * kMlaFp8RowBytes;

// 64 rows x 576 e4m3 codes into a plain (unswizzled) staging buffer; rows >= valid_rows are zero-filled.
__device__ __forceinline__ void mla_load_fp8_stage(uint32_t dst, const uint8_t* src, int valid_rows) {
    constexpr int kUnitsPerRow = kMlaFp8RowBytes / 16;  // 36
    for (int unit = threadIdx.x; unit < 64 * kUnitsPerRow; unit += kMlaThreads) {
        const int row = unit / kUnitsPerRow;
        const bool valid = row < valid_rows;
        mla_cp_async16(dst + unit * 16, src + (valid ? unit * 16 : 0), valid ? 16 : 0);
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
}

// The staged e4m3 page as bf16 into the swizzled tile: each 16 codes become two 16-byte bf16 units.
__device__ __forceinline__ void mla_convert_fp8_stage(uint32_t tile, uint32_t stage) {
    constexpr int kUnitsPerRow = kMlaFp8RowBytes / 16;  // 36
    for (int unit = threadIdx.x; unit < 64 * kUnitsPerRow; unit += kMlaThreads) {
        const int row = unit / kUnitsPerRow;
        const int u = unit % kUnitsPerRow;
        uint4 raw;
        asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];"
                     : "=r"(raw.x), "=r"(raw.y), "=r"(raw.z), "=r"(raw.w)
                     : "r"(stage + unit * 16));
        uint32_t w[4];
        fp8x8_to_unit(make_uint2(raw.x, raw.y), w);
        st_shared_v4(tile + swz(row, 2 * u, kMlaRowBytes), w);
        fp8x8_to_unit(make_uint2(raw.z, raw.w), w);
        st_shared_v4(tile + swz(row, 2 * u + 1, kMlaRowBytes), w);
    }
}

// grid: [num_splits, num_seqs, ceil(num_heads / 64)], block: 256, dynamic smem kMlaSmemBytes.
// Shared memory: Q tile | BF16: two page tiles / FP8: one page tile + two e4m3 staging buffers | P | pair maxima.
template <bool kFp8>
__global__ void __launch_bounds__(kMlaThreads, 1) mla_decode_split_kernel(const __grid_constant__ MlaDecodeParams p,
                                                                          int num_splits, int pages_per_split) {
    extern __shared__ __align__(128) uint8_t smem[];
    const uint32_t q_smem = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    const uint32_t kv_smem = q_smem + kMlaTileBytes;
    const int split = blockIdx.x;
    const int64_t seq = blockIdx.y;
    const int head0 = blockIdx.z * kMlaHeadsPerCta;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int group = lane >> 2;
    const int quad_lane = lane & 3;
    const int pair = warp % 4;
    const int half = warp / 4;
    const int warp_head = pair * 16;    // this pair's 16 heads (rows of S and O)
    const int warp_token = half * 32;   // this warp's 32 tokens of S
    const int warp_dim = half * 256;    // this warp's 256 output dims
    const uint32_t p_smem = q_smem + 3 * kMlaTileBytes + pair * (16 * 64 * 2);  // [16][64] bf16, swizzled
    float* pair_max = reinterpret_cast<float*>(smem + 3 * kMlaTileBytes + kMlaPBytes);  // [8 warps][16 rows]
    const int bar_id = 1 + pair;        // named barrier of the warp pair (64 threads)

    const int seq_len = p.seq_lens[seq];
    const int num_pages = (seq_len + kMlaPageTokens - 1) / kMlaPageTokens;
    // Each sequence spreads its own pages over the splits (pages_per_split is only the host's upper bound), so a
    // launch sized for the longest context (a CUDA graph captured for max_model_len) keeps every split busy on
    // shorter ones.
    const int seq_pages_per_split = min(pages_per_split, (num_pages + num_splits - 1) / num_splits);
    const int page_begin = split * seq_pages_per_split;
    const int page_end = min(num_pages, page_begin + seq_pages_per_split);
    const int32_t* block_table = p.block_tables + seq * p.max_blocks_per_seq;
    const uint32_t stage_smem = kv_smem + kMlaTileBytes;  // kFp8: [2][64][576] e4m3 after the one bf16 tile
    auto load_page = [&](int page, int buf) {
        const int64_t block_id = block_table[page];
        const int valid_rows = min(kMlaPageTokens, seq_len - page * kMlaPageTokens);
        if constexpr (kFp8) {
            mla_load_fp8_stage(stage_smem + buf * kMlaFp8StageBytes,
                               p.cache_fp8 + block_id * kMlaPageTokens * kMlaEntry, valid_rows);
        } else {
            mla_load_tile(kv_smem + buf * kMlaTileBytes, p.cache + block_id * kMlaPageTokens * kMlaEntry, kMlaEntry,
                          valid_rows);
        }
    };
    // Fewer than 64 heads (a tensor-parallel rank's share): the missing query rows are zeros and never written.
    mla_load_tile(q_smem, p.q + (seq * p.num_heads + head0) * kMlaEntry, kMlaEntry,
                  min(kMlaHeadsPerCta, p.num_heads - head0));
    if (page_begin < page_end) {
        load_page(page_begin, 0);
    }
    if (kFp8 && page_begin + 1 < page_end) {
        load_page(page_begin + 1, 1);  // FP8 prefetches two pages ahead: the bf16 tile is rewritten every page
    }

    const float scale_log2 = p.softmax_scale * (kFp8 ? p.kv_scale : 1.0f) * 1.4426950408889634f;
    float o[32][4] = {};
    float row_max[2] = {-INFINITY, -INFINITY};  // rows group, group + 8 (log2 domain); equal in both warps
    float row_sum[2] = {0.0f, 0.0f};            // this warp's tokens only; the pair's halves are added at the end
    for (int page = page_begin; page < page_end; ++page) {
        const int buf = (page - page_begin) & 1;
        uint32_t k_tile = kv_smem;
        if constexpr (kFp8) {
            // Pending groups: this page's stage and (if issued) the next one's.
            if (page + 1 < page_end) {
                asm volatile("cp.async.wait_group 1;" ::: "memory");
            } else {
                asm volatile("cp.async.wait_group 0;" ::: "memory");
            }
            __syncthreads();
            mla_convert_fp8_stage(kv_smem, stage_smem + buf * kMlaFp8StageBytes);
            __syncthreads();  // the tile is complete and this stage is free for the page after next
            if (page + 2 < page_end) {
                load_page(page + 2, buf);
            }
        } else {
            if (page + 1 < page_end) {
                load_page(page + 1, buf ^ 1);
                asm volatile("cp.async.wait_group 1;" ::: "memory");
            } else {
                asm volatile("cp.async.wait_group 0;" ::: "memory");
            }
            __syncthreads();
            k_tile = kv_smem + buf * kMlaTileBytes;
        }

        // S = Q K^T for this warp's 16 heads x 32 tokens.
        float s[4][4] = {};
#pragma unroll 4
        for (int kk = 0; kk < kMlaEntry / 16; ++kk) {
            uint32_t a[4];
            ldmatrix_x4(q_smem + swz(warp_head + lane % 16, 2 * kk + lane / 16, kMlaRowBytes), a);
#pragma unroll
            for (int np = 0; np < 2; ++np) {
                uint32_t b[4];
                ldmatrix_x4(k_tile + swz(warp_token + np * 16 + lane % 8 + (lane / 16) * 8, 2 * kk + (lane / 8) % 2,
                                         kMlaRowBytes),
                            b);
                mma_bf16(s[2 * np], a, b[0], b[1]);
                mma_bf16(s[2 * np + 1], a, b[2], b[3]);
            }
        }

        // Online softmax (exp2 domain); tokens past seq_len are -inf. The pair's row max goes through smem.
        const int valid = seq_len - page * kMlaPageTokens;
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int t = 0; t < 4; ++t) {
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int token = warp_token + t * 8 + quad_lane * 2 + (c & 1);
                s[t][c] = token < valid ? s[t][c] * scale_log2 : -INFINITY;
                tile_max[c / 2] = fmaxf(tile_max[c / 2], s[t][c]);
            }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
        }
        if (quad_lane == 0) {
            pair_max[warp * 16 + group] = tile_max[0];
            pair_max[warp * 16 + group + 8] = tile_max[1];
        }
        asm volatile("bar.sync %0, 64;" ::"r"(bar_id) : "memory");
        float corr[2];
        float tile_sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float other = pair_max[(warp ^ 4) * 16 + group + 8 * r];
            const float new_max = fmaxf(row_max[r], fmaxf(tile_max[r], other));
            corr[r] = exp2f(row_max[r] - new_max);  // 0 on the first page (row_max = -inf)
            row_max[r] = new_max;
        }
#pragma unroll
        for (int t = 0; t < 4; ++t) {
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                s[t][c] = exp2f(s[t][c] - row_max[c / 2]);
                tile_sum[c / 2] += s[t][c];
            }
            // P (bf16) of this warp's tokens into the pair's [16][64] tile: unit = token / 8, swizzled by row.
            const int unit = (warp_token + t * 8) / 8;
            asm volatile("st.shared.b32 [%0], %1;" ::"r"(p_smem + swz(group, unit, 128) + quad_lane * 4),
                         "r"(pack_bf16(s[t][0], s[t][1]))
                         : "memory");
            asm volatile("st.shared.b32 [%0], %1;" ::"r"(p_smem + swz(group + 8, unit, 128) + quad_lane * 4),
                         "r"(pack_bf16(s[t][2], s[t][3]))
                         : "memory");
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            tile_sum[r] += __shfl_xor_sync(0xffffffffu, tile_sum[r], 1);
            tile_sum[r] += __shfl_xor_sync(0xffffffffu, tile_sum[r], 2);
            row_sum[r] = row_sum[r] * corr[r] + tile_sum[r];
        }
#pragma unroll
        for (int t = 0; t < 32; ++t) {
            o[t][0] *= corr[0];
            o[t][1] *= corr[0];
            o[t][2] *= corr[1];
            o[t][3] *= corr[1];
        }
        asm volatile("bar.sync %0, 64;" ::"r"(bar_id) : "memory");  // the pair's P is complete

        // O += P V over all 64 tokens: P from the pair's tile, V = the page's first 512 columns.
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            uint32_t a[4];
            ldmatrix_x4(p_smem + swz(lane % 16, 2 * kk + lane / 16, 128), a);
#pragma unroll
            for (int dp = 0; dp < 16; ++dp) {
                uint32_t b[4];
                ldmatrix_x4_trans(k_tile + swz(kk * 16 + lane % 8 + ((lane / 8) % 2) * 8,
                                               warp_dim / 8 + 2 * dp + lane / 16, kMlaRowBytes),
                                  b);
                mma_bf16(o[2 * dp], a, b[0], b[1]);
                mma_bf16(o[2 * dp + 1], a, b[2], b[3]);
            }
        }
        __syncthreads();  // every warp is done with this page (and the pair tiles) before they are refilled
    }

    // The pair's row sums: warps 4..7 hand theirs to warps 0..3 (pair_max is free after the last barrier).
    if (half == 1 && quad_lane == 0) {
        pair_max[warp * 16 + group] = row_sum[0];
        pair_max[warp * 16 + group + 8] = row_sum[1];
    }
    __syncthreads();
    if (half == 0) {
        row_sum[0] += pair_max[(warp + 4) * 16 + group];
        row_sum[1] += pair_max[(warp + 4) * 16 + group + 8];
    }

    // Unnormalized partials: o_part [num_seqs, num_heads, num_splits, 512], ml [.., num_splits, 2].
    const int64_t rows = p.num_seqs * p.num_heads;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int head = head0 + warp_head + group + 8 * r;
        if (head >= p.num_heads) {
            continue;  // a padding row of a partial head group
        }
        const int64_t slot = (seq * p.num_heads + head) * num_splits + split;
        float* o_part = p.workspace + slot * kMlaLatent + warp_dim;
#pragma unroll
        for (int t = 0; t < 32; ++t) {
            *reinterpret_cast<float2*>(o_part + t * 8 + quad_lane * 2) = make_float2(o[t][2 * r], o[t][2 * r + 1]);
        }
        if (half == 0 && quad_lane == 0) {
            float* ml = p.workspace + rows * num_splits * kMlaLatent + slot * 2;
            ml[0] = row_max[r];
            ml[1] = row_sum[r];
        }
    }
}

// grid: [num_seqs * num_heads], block: 128 (4 output dims per thread).
__global__ void __launch_bounds__(128) mla_decode_combine_kernel(const __grid_constant__ MlaDecodeParams p,
                                                                 int num_splits) {
    const int64_t row = blockIdx.x;  // seq * num_heads + head
    const int64_t rows = p.num_seqs * p.num_heads;
    const float* ml = p.workspace + rows * num_splits * kMlaLatent + row * num_splits * 2;
    float global_max = -INFINITY;
    for (int s = 0; s < num_splits; ++s) {
        global_max = fmaxf(global_max, ml[2 * s]);
    }
    float denom = 0.0f;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int s = 0; s < num_splits; ++s) {
        const float w = exp2f(ml[2 * s] - global_max);  // 0 for splits without pages (m = -inf)
        denom += w * ml[2 * s + 1];
        const float4 v =
            reinterpret_cast<const float4*>(p.workspace + (row * num_splits + s) * kMlaLatent)[threadIdx.x];
        acc.x += w * v.x;
        acc.y += w * v.y;
        acc.z += w * v.z;
        acc.w += w * v.w;
    }
    const float inv = (p.cache_fp8 != nullptr ? p.kv_scale : 1.0f) / denom;
    reinterpret_cast<float4*>(p.out + row * kMlaLatent)[threadIdx.x] =
        make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv);
}

}  // namespace k2::cuda::kernels

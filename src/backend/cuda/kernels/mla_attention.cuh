// The general absorbed MLA attention of mla_ops.h (prefill and decode, any head count, lat % 32 == 0 <= 512,
// even rope <= 64, BF16 or FP8 paged latent cache). Built like kernels/mla_decode.cuh, generalized:
// - One CTA (8 warps) per 64 query rows = (token, head) pairs: heads_per_cta = min(heads, 64) heads of
//   tokens_per_cta = 64 / heads_per_cta consecutive tokens (Kimi-K2: 1 token x 64 heads; tiny: 16 tokens x 4 heads),
//   so the rows of a CTA share every key tile (all heads of a token attend to the same latent entries).
// - Keys stream through shared memory in tiles of 64 entries (double buffered: cp.async for a BF16 cache; an FP8
//   cache is converted to bf16 on the way, which is exact for e4m3, and kv_scale is applied to the scores and the
//   output instead). Rows are zero padded to a multiple of 64 values and 16-byte units are XOR-swizzled by row,
//   so ldmatrix is conflict-free. Keys past the pass's last position are zero-filled, never read from the cache.
// - Warps w and w + 4 own query rows 16 (w % 4)..: S = Q K^T for 32 of the 64 keys each, the pair agrees on the
//   row max through shared memory, P (bf16) is shared, and each warp does O += P V over all 64 keys for its half
//   of the lat dims (mma.sync m16n8k16 bf16, fp32 accumulation). Online softmax in fp32 (exp2 domain).
// - Tokens of one CTA may belong to different sequences (decode batches, the boundary of two prefill chunks):
//   the CTA makes one pass over the keys of each distinct sequence; rows of other sequences are masked (-inf), so
//   their running max / sum / O carry over unchanged. Causal mask per row: key j is used iff j <= positions[t].
// - CTAs are issued latest token group first: in a causal prefill those have the longest contexts.
// No split-KV (the interface has no workspace): a decode batch of few sequences with long contexts runs on few
// SMs; the Kimi-K2 BF16 decode fast path is mla_decode.h.
//
// Expected time, 8192-token causal prefill at Kimi-K2 shape (64 heads, lat 512, rope 64), H200:
//   work = 64 heads x (8192 x 8193 / 2 keys) x (576 + 512) x 2 FLOP = 4.7 TFLOP (+~1% for the diagonal tiles).
//   The per-tile loop is mla_decode's, which measured 203 TFLOP/s on the H200 (docs/perf/kernels.md: mma.sync,
//   8 warps, 1 CTA per SM, synchronous softmax; ~20% of the 989 TFLOP/s dense peak): ~23 ms (range 15-30 ms).
//   Shared-memory fill: every CTA (one token) reads its context once, 8192 x 4096 x 1152 B = 39 GB from L2 (the
//   whole 9.4 MB cache stays in L2), ~4-5 ms at L2 bandwidth, overlapped
//   with the MMAs for a BF16 cache (cp.async double buffering); an FP8 cache halves the bytes but its loads and
//   conversion are synchronous (3 exposed L2 round trips per tile: maybe +30-50%). HBM traffic is negligible.
//   A plain fp32-FMA kernel would need >= 80 ms (60 TFLOP/s peak). Per layer; x61 layers for the whole model.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cmath>
#include <cstdint>

#include "backend/cuda/kernels/warp_mma.cuh"
#include "backend/cuda/mla_ops.h"
#include "backend/cuda/mla_ops_detail.h"

namespace k2::cuda::kernels::mla_attn {

inline constexpr int kThreads = 256;
inline constexpr int kRows = detail::kMlaAttnRows;                            // 64 query rows per CTA
inline constexpr int kKeys = detail::kMlaAttnKeys;                            // 64 keys per tile
inline constexpr int kMaxPadded = 576;                                        // (512 + 64) rounded up to 64
inline constexpr int kMaxUnitsPerThread = kKeys * kMaxPadded / 8 / kThreads;  // 18 16-byte units per tile load
inline constexpr int kFp8Chunk = 6;                                           // divides kMaxUnitsPerThread
inline constexpr int kPTileBytes = 16 * kKeys * 2;                            // [16 rows][64 keys] bf16 per pair

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}

// One 16-byte unit (values e0..e0+7 of a row of `qd` bf16) into shared memory; src == nullptr or values past qd
// give zeros. vec: qd % 8 == 0 and 16-byte aligned rows (cp.async), else element loads.
__device__ __forceinline__ void load_unit_bf16(uint32_t dst, const uint16_t* src, int e0, int qd, bool vec,
                                               const void* any_global) {
    if (vec) {
        const bool valid = src != nullptr && e0 < qd;
        cp_async16(dst, valid ? static_cast<const void*>(src + e0) : any_global, valid ? 16 : 0);
        return;
    }
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const int i = e0 + 2 * k;
        const uint32_t lo = (src != nullptr && i < qd) ? src[i] : 0u;
        const uint32_t hi = (src != nullptr && i + 1 < qd) ? src[i + 1] : 0u;
        w[k] = lo | (hi << 16);
    }
    st_shared_v4(dst, w);
}

// One 16-byte unit of bf16 from 8 e4m3 values e0..e0+7 of a row of `qd` codes (zeros past qd / for nullptr).
__device__ __forceinline__ uint2 load_fp8x8(const uint8_t* src, int e0, int qd, bool vec) {
    if (src == nullptr || e0 >= qd) {
        return make_uint2(0u, 0u);
    }
    if (vec) {
        return *reinterpret_cast<const uint2*>(src + e0);
    }
    uint32_t b[2] = {0u, 0u};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        if (e0 + i < qd) {
            b[i / 4] |= uint32_t{src[e0 + i]} << (8 * (i % 4));
        }
    }
    return make_uint2(b[0], b[1]);
}

struct CtaShape {
    int heads_per_cta;
    int tokens_per_cta;
    int padded_dim;
};

// grid: [ceil(num_tokens / tokens_per_cta), ceil(heads / heads_per_cta)], block: 256,
// dynamic smem detail::mla_attention_smem_bytes(padded_dim).
__global__ void __launch_bounds__(kThreads, 1)
    mla_attention_kernel(const __grid_constant__ MlaAttentionParams p, const CtaShape shape) {
    extern __shared__ __align__(128) uint8_t smem[];
    const int pd = shape.padded_dim;
    const int hpc = shape.heads_per_cta;
    const int tpc = shape.tokens_per_cta;
    const int row_bytes = pd * 2;
    const int tile_bytes = kRows * row_bytes;
    const int units = pd / 8;  // 16-byte units per row
    const int qd = p.lat + p.rope;
    const uint32_t q_smem = static_cast<uint32_t>(__cvta_generic_to_shared(smem));         // [64][pd] bf16
    const uint32_t kv_smem = q_smem + tile_bytes;                                          // 2 x [64][pd] bf16
    float* pair_stat = reinterpret_cast<float*>(smem + 3 * tile_bytes + 4 * kPTileBytes);  // [8 warps][16 rows]
    int* s_seq = reinterpret_cast<int*>(pair_stat + 8 * 16);                               // [64]
    int* s_pos = s_seq + kRows;                                                            // [64]

    const int64_t num_groups = (p.num_tokens + tpc - 1) / tpc;
    const int64_t token0 = (num_groups - 1 - static_cast<int64_t>(blockIdx.x)) * tpc;  // latest tokens first
    const int head0 = static_cast<int>(blockIdx.y) * hpc;
    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int group = lane >> 2;
    const int quad_lane = lane & 3;
    const int pair = warp % 4;
    const int half = warp / 4;
    const int warp_row = pair * 16;           // this pair's 16 query rows (rows of S and O)
    const int warp_key = half * 32;           // this warp's 32 keys of S
    const int warp_dim = half * (p.lat / 2);  // this warp's lat / 2 output dims
    const int num_dp = p.lat / 32;            // 16-dim column pairs of this warp's output (<= 16)
    const uint32_t p_smem = q_smem + 3 * tile_bytes + pair * kPTileBytes;  // [16][64] bf16, swizzled
    const int bar_id = 1 + pair;  // named barrier of the warp pair (64 threads)
    const bool vec = qd % 8 == 0;

    if (threadIdx.x < kRows) {
        const int i = static_cast<int>(threadIdx.x);
        const int64_t t = token0 + i;
        const bool ok = i < tpc && t < p.num_tokens;
        s_seq[i] = ok ? p.token_seq[t] : -1;
        s_pos[i] = ok ? p.positions[t] : -1;
    }
    // Query tile: row r = (token token0 + r / hpc, head head0 + r % hpc); rows outside the batch are zeros.
    for (int u = static_cast<int>(threadIdx.x); u < kRows * units; u += kThreads) {
        const int row = u / units;
        const int unit = u % units;
        const int64_t t = token0 + row / hpc;
        const int head = head0 + row % hpc;
        const bool ok = row / hpc < tpc && t < p.num_tokens && head < p.heads;
        load_unit_bf16(q_smem + swz(row, unit, row_bytes), ok ? p.q + (t * p.heads + head) * qd : nullptr, unit * 8, qd,
                       vec, p.q);
    }
    cp_async_commit();
    __syncthreads();  // s_seq / s_pos

    // This thread's two rows (group, group + 8 of the warp's 16).
    int row_tok[2];
    bool row_ok[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = warp_row + group + 8 * r;
        row_tok[r] = row / hpc;
        row_ok[r] = row_tok[r] < tpc && token0 + row_tok[r] < p.num_tokens && head0 + row % hpc < p.heads;
    }

    const float kv_scale = p.cache.fp8 ? p.cache.kv_scale : 1.0f;
    const float scale_log2 = p.softmax_scale * kv_scale * 1.4426950408889634f;
    float o[32][4] = {};
    float row_max[2] = {-INFINITY, -INFINITY};  // log2 domain; equal in both warps of a pair
    float row_sum[2] = {0.0f, 0.0f};            // this warp's keys only; the pair's halves are added at the end

    for (int first = 0; first < tpc; ++first) {
        // One pass per distinct sequence of the CTA's tokens (uniform over the CTA: shared-memory data).
        const int seq = s_seq[first];
        bool seen = seq < 0;
        for (int k = 0; k < first; ++k) {
            seen = seen || s_seq[k] == seq;
        }
        if (seen) {
            continue;
        }
        int max_pos = -1;
        for (int k = first; k < tpc; ++k) {
            max_pos = s_seq[k] == seq ? max(max_pos, s_pos[k]) : max_pos;
        }
        int limit[2];  // last key position of each row in this pass (-1: row not in this sequence)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            limit[r] = row_ok[r] && s_seq[row_tok[r]] == seq ? s_pos[row_tok[r]] : -1;
        }
        const int num_tiles = (max_pos + kKeys) / kKeys;  // keys 0..max_pos
        const int32_t* block_table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;

        auto load_tile = [&](int tile, int buf) {
            const uint32_t dst = kv_smem + buf * tile_bytes;
            if (!p.cache.fp8) {
                const uint16_t* cache = static_cast<const uint16_t*>(p.cache.data);
                for (int u = static_cast<int>(threadIdx.x); u < kKeys * units; u += kThreads) {
                    const int row = u / units;
                    const int unit = u % units;
                    const int j = tile * kKeys + row;
                    const uint16_t* src = nullptr;
                    if (j <= max_pos) {
                        const int64_t slot = int64_t{block_table[j / p.block_size]} * p.block_size + j % p.block_size;
                        src = cache + slot * qd;
                    }
                    load_unit_bf16(dst + swz(row, unit, row_bytes), src, unit * 8, qd, vec, cache);
                }
                cp_async_commit();
                return;
            }
            // FP8: the loads of a chunk of units first (registers), then convert and store; chunks of 6 units
            // keep the register pressure next to the 128 accumulators low.
            const uint8_t* cache = static_cast<const uint8_t*>(p.cache.data);
#pragma unroll 1
            for (int chunk = 0; chunk < kMaxUnitsPerThread && chunk * kThreads < kKeys * units; chunk += kFp8Chunk) {
                uint2 raw[kFp8Chunk];
#pragma unroll
                for (int k = 0; k < kFp8Chunk; ++k) {
                    const int u = static_cast<int>(threadIdx.x) + (chunk + k) * kThreads;
                    const int row = u / units;
                    const int j = tile * kKeys + row;
                    const uint8_t* src = nullptr;
                    if (u < kKeys * units && j <= max_pos) {
                        const int64_t slot = int64_t{block_table[j / p.block_size]} * p.block_size + j % p.block_size;
                        src = cache + slot * qd;
                    }
                    raw[k] = load_fp8x8(src, (u % units) * 8, qd, vec);
                }
#pragma unroll
                for (int k = 0; k < kFp8Chunk; ++k) {
                    const int u = static_cast<int>(threadIdx.x) + (chunk + k) * kThreads;
                    if (u < kKeys * units) {
                        uint32_t w[4];
                        fp8x8_to_unit(raw[k], w);
                        st_shared_v4(dst + swz(u / units, u % units, row_bytes), w);
                    }
                }
            }
            cp_async_commit();  // an empty group keeps the wait_group counts of both paths equal
        };

        load_tile(0, 0);
        for (int tile = 0; tile < num_tiles; ++tile) {
            const int buf = tile & 1;
            if (tile + 1 < num_tiles) {
                load_tile(tile + 1, buf ^ 1);
                asm volatile("cp.async.wait_group 1;" ::: "memory");
            } else {
                asm volatile("cp.async.wait_group 0;" ::: "memory");
            }
            __syncthreads();
            const uint32_t k_tile = kv_smem + buf * tile_bytes;

            // S = Q K^T for this warp's 16 rows x 32 keys.
            float s[4][4] = {};
#pragma unroll 4
            for (int kk = 0; kk < pd / 16; ++kk) {
                uint32_t a[4];
                ldmatrix_x4(q_smem + swz(warp_row + lane % 16, 2 * kk + lane / 16, row_bytes), a);
#pragma unroll
                for (int np = 0; np < 2; ++np) {
                    uint32_t b[4];
                    ldmatrix_x4(k_tile + swz(warp_key + np * 16 + lane % 8 + (lane / 16) * 8, 2 * kk + (lane / 8) % 2,
                                             row_bytes),
                                b);
                    mma_bf16(s[2 * np], a, b[0], b[1]);
                    mma_bf16(s[2 * np + 1], a, b[2], b[3]);
                }
            }

            // Causal mask and online softmax; the pair's row max goes through shared memory.
            const int key0 = tile * kKeys;
            float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int t = 0; t < 4; ++t) {
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    const int key = key0 + warp_key + t * 8 + quad_lane * 2 + (c & 1);
                    s[t][c] = key <= limit[c / 2] ? s[t][c] * scale_log2 : -INFINITY;
                    tile_max[c / 2] = fmaxf(tile_max[c / 2], s[t][c]);
                }
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
                tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
            }
            if (quad_lane == 0) {
                pair_stat[warp * 16 + group] = tile_max[0];
                pair_stat[warp * 16 + group + 8] = tile_max[1];
            }
            asm volatile("bar.sync %0, 64;" ::"r"(bar_id) : "memory");
            float corr[2];
            float base[2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const float other = pair_stat[(warp ^ 4) * 16 + group + 8 * r];
                const float new_max = fmaxf(row_max[r], fmaxf(tile_max[r], other));
                // A row with no usable key yet (new_max = -inf) keeps O = 0, l = 0: no NaN from -inf - -inf.
                corr[r] = new_max == -INFINITY ? 1.0f : exp2f(row_max[r] - new_max);
                base[r] = new_max == -INFINITY ? 0.0f : new_max;
                row_max[r] = new_max;
            }
            float tile_sum[2] = {0.0f, 0.0f};
#pragma unroll
            for (int t = 0; t < 4; ++t) {
                // P is rounded to bf16 for the MMA; the row sum adds the same rounded values.
                const __nv_bfloat162 p0 = __floats2bfloat162_rn(exp2f(s[t][0] - base[0]), exp2f(s[t][1] - base[0]));
                const __nv_bfloat162 p1 = __floats2bfloat162_rn(exp2f(s[t][2] - base[1]), exp2f(s[t][3] - base[1]));
                const float2 f0 = __bfloat1622float2(p0);
                const float2 f1 = __bfloat1622float2(p1);
                tile_sum[0] += f0.x + f0.y;
                tile_sum[1] += f1.x + f1.y;
                const int unit = (warp_key + t * 8) / 8;
                asm volatile("st.shared.b32 [%0], %1;" ::"r"(p_smem + swz(group, unit, 128) + quad_lane * 4),
                             "r"(reinterpret_cast<const uint32_t&>(p0))
                             : "memory");
                asm volatile("st.shared.b32 [%0], %1;" ::"r"(p_smem + swz(group + 8, unit, 128) + quad_lane * 4),
                             "r"(reinterpret_cast<const uint32_t&>(p1))
                             : "memory");
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                tile_sum[r] += __shfl_xor_sync(0xffffffffu, tile_sum[r], 1);
                tile_sum[r] += __shfl_xor_sync(0xffffffffu, tile_sum[r], 2);
                row_sum[r] = row_sum[r] * corr[r] + tile_sum[r];
            }
#pragma unroll
            for (int n = 0; n < 32; ++n) {
                o[n][0] *= corr[0];
                o[n][1] *= corr[0];
                o[n][2] *= corr[1];
                o[n][3] *= corr[1];
            }
            asm volatile("bar.sync %0, 64;" ::"r"(bar_id) : "memory");  // the pair's P is complete

            // O += P V over all 64 keys: P from the pair's tile, V = the tile's first lat columns.
#pragma unroll
            for (int kk = 0; kk < kKeys / 16; ++kk) {
                uint32_t a[4];
                ldmatrix_x4(p_smem + swz(lane % 16, 2 * kk + lane / 16, 128), a);
#pragma unroll
                for (int dp = 0; dp < 16; ++dp) {
                    if (dp < num_dp) {
                        uint32_t b[4];
                        ldmatrix_x4_trans(k_tile + swz(kk * 16 + lane % 8 + ((lane / 8) % 2) * 8,
                                                       warp_dim / 8 + 2 * dp + lane / 16, row_bytes),
                                          b);
                        mma_bf16(o[2 * dp], a, b[0], b[1]);
                        mma_bf16(o[2 * dp + 1], a, b[2], b[3]);
                    }
                }
            }
            __syncthreads();  // every warp is done with this tile (and the pair tiles) before they are refilled
        }
    }

    // Row sums of the pair (pair_stat is free after the last __syncthreads; also when there was no pass).
    __syncthreads();
    if (quad_lane == 0) {
        pair_stat[warp * 16 + group] = row_sum[0];
        pair_stat[warp * 16 + group + 8] = row_sum[1];
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (!row_ok[r]) {
            continue;
        }
        const float total = row_sum[r] + pair_stat[(warp ^ 4) * 16 + group + 8 * r];
        // A row with no visible key (decode context parallelism: none of its context on this rank) has O = 0, l = 0:
        // it writes zeros and lse = -inf, which the DCP merge weighs by exp(-inf) = 0.
        const float inv = total > 0.0f ? kv_scale / total : 0.0f;
        const int row = warp_row + group + 8 * r;
        const int64_t t = token0 + row_tok[r];
        const int head = head0 + row % hpc;
        if (p.lse != nullptr && half == 0 && quad_lane == 0) {
            // ln sum_j exp(scale * q.k_j): row_max is the log2-domain max of the scaled scores, total the sum of
            // exp2(score - max) (the same bf16-rounded P that O was built from).
            p.lse[t * p.heads + head] = total > 0.0f ? (row_max[r] + log2f(total)) * 0.6931471805599453f : -INFINITY;
        }
        uint16_t* dst = p.out + (t * p.heads + head) * p.lat + warp_dim;  // [lat / 2] bf16 of this warp
#pragma unroll
        for (int n = 0; n < 32; ++n) {
            if (n < 2 * num_dp) {
                *reinterpret_cast<uint32_t*>(dst + n * 8 + quad_lane * 2) =
                    pack_bf16(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
            }
        }
    }
}

}  // namespace k2::cuda::kernels::mla_attn

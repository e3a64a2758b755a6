// Causal variable-length flash-attention forward of mla_prefill.h (FlashAttention-2's structure, hdim-192 tiling):
// - One CTA per (head, 128-query tile of one sequence). Default (Shape<8, 1>): 8 warps, warp w owns query rows
//   16w..16w+15, and the Q tile goes through shared memory once into registers (12 A fragments of m16n8k16 per warp).
// - Keys stream in tiles of 64: K = [k_nope (128) | k_pe (64)] rows of 384 bytes and V rows of 256 bytes, double
//   buffered with cp.async (16-byte units, XOR-swizzled by row so ldmatrix is conflict-free). Keys past the CTA's
//   last needed key are zero-filled, never read.
// - Per tile and warp: S = Q K^T (16 x 64, mma.sync bf16 -> fp32), causal mask only on tiles that cross the warp's
//   diagonal, online softmax in the exp2 domain (row max over the 4 lanes of a quad), P rounded to bf16 and used
//   straight from the S registers as the A operand of O += P V (16 x 128; V through ldmatrix.trans).
// - CTAs are issued heaviest first (the last query tiles of a causal sequence have the longest contexts).
// Kimi-K2, 8192 causal tokens, 64 heads: 1.37 TFLOP. Predicted 4-5 ms (FA2 with mma.sync reaches ~300-350 TFLOP/s on
// an H100); measured on the H200 6.49 ms = 212 TFLOP/s with Shape<8, 1>, against 37.0 ms for the absorbed kernel
// (docs/perf/kernels.md). Shape<4, 2> spills and measured 146 TFLOP/s.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cmath>
#include <cstdint>

#include "backend/cuda/kernels/warp_mma.cuh"
#include "backend/cuda/mla_prefill.h"

namespace k2::cuda::kernels::mla_prefill {

inline constexpr int kKeys = 64;                                // keys per tile
inline constexpr int kDqk = kMlaPrefillNope + kMlaPrefillRope;  // 192
inline constexpr int kDv = kMlaPrefillDv;                       // 128
inline constexpr int kQkRowBytes = kDqk * 2;                    // 384: 24 16-byte units
inline constexpr int kVRowBytes = kDv * 2;                      // 256: 16 units
inline constexpr int kQkUnits = kQkRowBytes / 16;
inline constexpr int kVUnits = kVRowBytes / 16;
inline constexpr int kNopeUnits = kMlaPrefillNope / 8;
inline constexpr int kKTileBytes = kKeys * kQkRowBytes;  // 24 KB
inline constexpr int kVTileBytes = kKeys * kVRowBytes;   // 16 KB

// kWarps warps of 16 * kMt query rows each:
// - <8, 1>: 128 rows, Q fragments kept in registers (12 x 4), 128 KB of shared memory, 1 CTA per SM (registers).
// - <4, 2>: 128 rows, FlashAttention-2's hdim-128 layout: each K / V fragment feeds both m-tiles of a warp (35% less
//   ldmatrix traffic per FLOP), Q fragments re-read from shared memory every tile (no room in registers).
template <int kWarps, int kMt>
struct Shape {
    static constexpr int kThreads = 32 * kWarps;
    static constexpr int kRowsPerWarp = 16 * kMt;
    static constexpr int kRowsQ = kRowsPerWarp * kWarps;
    static constexpr int kQTileBytes = kRowsQ * kQkRowBytes;
    static constexpr int kSmemBytes = kQTileBytes + 2 * (kKTileBytes + kVTileBytes);
    static constexpr bool kQInRegs = kMt == 1;
};

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0) : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}

// grid: [heads, ceil(max_q_len / kRowsQ), num_seqs], block: kThreads, dynamic smem kSmemBytes.
template <int kWarps, int kMt>
__global__ void __launch_bounds__(Shape<kWarps, kMt>::kThreads, 1)
    mla_prefill_kernel(const __grid_constant__ MlaPrefillParams p) {
    using S = Shape<kWarps, kMt>;
    constexpr int kThreads = S::kThreads;
    constexpr int kRowsQ = S::kRowsQ;
    extern __shared__ __align__(128) uint8_t smem[];
    const int head = static_cast<int>(blockIdx.x);
    const int seq = static_cast<int>(blockIdx.z);
    const int q_begin = p.cu_seqlens_q[seq];
    const int q_len = p.cu_seqlens_q[seq + 1] - q_begin;
    const int m0 = (static_cast<int>(gridDim.y) - 1 - static_cast<int>(blockIdx.y)) * kRowsQ;  // heaviest first
    if (m0 >= q_len) {
        return;  // uniform over the CTA
    }
    const int k_begin = p.cu_seqlens_k[seq];
    const int k_len = p.cu_seqlens_k[seq + 1] - k_begin;
    const int offset = k_len - q_len;  // position of query row i is offset + i
    const int last_row = min(m0 + kRowsQ, q_len) - 1;
    const int key_end = max(0, min(k_len, offset + last_row + 1));  // the CTA needs keys [0, key_end)
    const int num_tiles = (key_end + kKeys - 1) / kKeys;

    const int tid = static_cast<int>(threadIdx.x);
    const int warp = tid / 32;
    const int lane = tid % 32;
    const int group = lane >> 2;
    const int quad_lane = lane & 3;
    const int warp_row = warp * S::kRowsPerWarp;
    const uint32_t q_smem = static_cast<uint32_t>(__cvta_generic_to_shared(smem));  // [rows][192] bf16, swizzled
    const uint32_t k_smem = q_smem + S::kQTileBytes;                                // 2 x [64][192]
    const uint32_t v_smem = k_smem + 2 * kKTileBytes;                               // 2 x [64][128]

    // Q tile; rows past q_len are zeros.
    for (int u = tid; u < kRowsQ * kQkUnits; u += kThreads) {
        const int row = u / kQkUnits;
        const int unit = u % kQkUnits;
        const bool valid = m0 + row < q_len;
        const uint16_t* src = p.q + int64_t{q_begin + m0 + row} * p.q_stride + int64_t{head} * kDqk + unit * 8;
        cp_async16(q_smem + swz(row, unit, kQkRowBytes), valid ? src : p.q, valid);
    }
    cp_async_commit();

    const uint16_t* k_head = p.k_nope + int64_t{head} * p.kv_head_stride;
    const uint16_t* v_head = p.v + int64_t{head} * p.kv_head_stride;
    auto load_tile = [&](int tile, int buf) {
        const uint32_t k_dst = k_smem + buf * kKTileBytes;
        const uint32_t v_dst = v_smem + buf * kVTileBytes;
        for (int u = tid; u < kKeys * kQkUnits; u += kThreads) {
            const int row = u / kQkUnits;
            const int unit = u % kQkUnits;
            const int j = tile * kKeys + row;
            const bool valid = j < key_end;
            const int64_t ctx = k_begin + j;
            const uint16_t* src = unit < kNopeUnits ? k_head + ctx * p.kv_stride + unit * 8
                                                    : p.k_pe + ctx * p.k_pe_stride + (unit - kNopeUnits) * 8;
            cp_async16(k_dst + swz(row, unit, kQkRowBytes), valid ? src : p.k_pe, valid);
        }
        for (int u = tid; u < kKeys * kVUnits; u += kThreads) {
            const int row = u / kVUnits;
            const int unit = u % kVUnits;
            const int j = tile * kKeys + row;
            const bool valid = j < key_end;
            const uint16_t* src = v_head + int64_t{k_begin + j} * p.kv_stride + unit * 8;
            cp_async16(v_dst + swz(row, unit, kVRowBytes), valid ? src : p.v, valid);
        }
        cp_async_commit();
    };

    // This thread's rows (group, group + 8 of each 16-row m-tile): last usable key position, -1 past q_len.
    int limit[kMt][2];
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = m0 + warp_row + mt * 16 + group + 8 * r;
            limit[mt][r] = row < q_len ? offset + row : -1;
        }
    }
    const int warp_first_pos = offset + m0 + warp_row;  // position of the warp's first row
    const float scale_log2 = p.softmax_scale * 1.4426950408889634f;

    uint32_t qf[S::kQInRegs ? kDqk / 16 : 1][4];
    float o[kMt][kDv / 8][4] = {};
    float row_max[kMt][2];  // log2 domain
    float row_sum[kMt][2];  // this thread's columns only; the quad's sums are added at the end
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) {
        row_max[mt][0] = row_max[mt][1] = -INFINITY;
        row_sum[mt][0] = row_sum[mt][1] = 0.0f;
    }

    if (num_tiles > 0) {
        load_tile(0, 0);
    }
    for (int tile = 0; tile < num_tiles; ++tile) {
        const int buf = tile & 1;
        if (tile + 1 < num_tiles) {
            load_tile(tile + 1, buf ^ 1);
            asm volatile("cp.async.wait_group 1;" ::: "memory");
        } else {
            asm volatile("cp.async.wait_group 0;" ::: "memory");
        }
        __syncthreads();
        if constexpr (S::kQInRegs) {
            if (tile == 0) {
#pragma unroll
                for (int kk = 0; kk < kDqk / 16; ++kk) {
                    ldmatrix_x4(q_smem + swz(warp_row + lane % 16, 2 * kk + lane / 16, kQkRowBytes), qf[kk]);
                }
            }
        }
        const int key0 = tile * kKeys;
        // Warp-uniform: a tile wholly after the warp's last row contributes nothing to it.
        if (key0 <= warp_first_pos + S::kRowsPerWarp - 1) {
            const uint32_t k_tile = k_smem + buf * kKTileBytes;
            const uint32_t v_tile = v_smem + buf * kVTileBytes;
            float s[kMt][kKeys / 8][4] = {};
#pragma unroll
            for (int kk = 0; kk < kDqk / 16; ++kk) {
                uint32_t a[kMt][4];
#pragma unroll
                for (int mt = 0; mt < kMt; ++mt) {
                    if constexpr (S::kQInRegs) {
#pragma unroll
                        for (int i = 0; i < 4; ++i)
                            a[mt][i] = qf[kk][i];
                    } else {
                        ldmatrix_x4(q_smem + swz(warp_row + mt * 16 + lane % 16, 2 * kk + lane / 16, kQkRowBytes),
                                    a[mt]);
                    }
                }
#pragma unroll
                for (int np = 0; np < kKeys / 16; ++np) {
                    uint32_t b[4];
                    ldmatrix_x4(
                        k_tile + swz(np * 16 + lane % 8 + (lane / 16) * 8, 2 * kk + (lane / 8) % 2, kQkRowBytes), b);
#pragma unroll
                    for (int mt = 0; mt < kMt; ++mt) {
                        mma_bf16(s[mt][2 * np], a[mt], b[0], b[1]);
                        mma_bf16(s[mt][2 * np + 1], a[mt], b[2], b[3]);
                    }
                }
            }
            // Causal mask only where the tile reaches past the warp's first row position (the diagonal tiles).
            const bool mask = key0 + kKeys - 1 > warp_first_pos;
            uint32_t pf[kMt][kKeys / 16][4];  // P (bf16) in the A-fragment layout: keys 16kk.. = S n-tiles 2kk, 2kk+1
#pragma unroll
            for (int mt = 0; mt < kMt; ++mt) {
                float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
                for (int t = 0; t < kKeys / 8; ++t) {
#pragma unroll
                    for (int c = 0; c < 4; ++c) {
                        const int key = key0 + t * 8 + quad_lane * 2 + (c & 1);
                        const float x = s[mt][t][c] * scale_log2;
                        s[mt][t][c] = (mask && key > limit[mt][c / 2]) ? -INFINITY : x;
                        tile_max[c / 2] = fmaxf(tile_max[c / 2], s[mt][t][c]);
                    }
                }
                float corr[2];
                float base[2];
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
                    tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
                    const float new_max = fmaxf(row_max[mt][r], tile_max[r]);
                    // A row with no usable key yet (new_max = -inf) keeps O = 0, l = 0: no NaN from -inf - -inf.
                    corr[r] = new_max == -INFINITY ? 1.0f : exp2f(row_max[mt][r] - new_max);
                    base[r] = new_max == -INFINITY ? 0.0f : new_max;
                    row_max[mt][r] = new_max;
                }
                float tile_sum[2] = {0.0f, 0.0f};
#pragma unroll
                for (int t = 0; t < kKeys / 8; ++t) {
                    const __nv_bfloat162 p0 =
                        __floats2bfloat162_rn(exp2f(s[mt][t][0] - base[0]), exp2f(s[mt][t][1] - base[0]));
                    const __nv_bfloat162 p1 =
                        __floats2bfloat162_rn(exp2f(s[mt][t][2] - base[1]), exp2f(s[mt][t][3] - base[1]));
                    const float2 f0 = __bfloat1622float2(p0);  // the row sum adds the same rounded values
                    const float2 f1 = __bfloat1622float2(p1);
                    tile_sum[0] += f0.x + f0.y;
                    tile_sum[1] += f1.x + f1.y;
                    pf[mt][t / 2][(t % 2) * 2] = reinterpret_cast<const uint32_t&>(p0);
                    pf[mt][t / 2][(t % 2) * 2 + 1] = reinterpret_cast<const uint32_t&>(p1);
                }
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    row_sum[mt][r] = row_sum[mt][r] * corr[r] + tile_sum[r];
                }
#pragma unroll
                for (int n = 0; n < kDv / 8; ++n) {
                    o[mt][n][0] *= corr[0];
                    o[mt][n][1] *= corr[0];
                    o[mt][n][2] *= corr[1];
                    o[mt][n][3] *= corr[1];
                }
            }
            // O += P V: V rows are keys (k), columns dims (n): ldmatrix.trans gives the col-major B fragments.
#pragma unroll
            for (int kk = 0; kk < kKeys / 16; ++kk) {
#pragma unroll
                for (int dp = 0; dp < kDv / 16; ++dp) {
                    uint32_t b[4];
                    ldmatrix_x4_trans(
                        v_tile + swz(kk * 16 + lane % 8 + ((lane / 8) % 2) * 8, 2 * dp + lane / 16, kVRowBytes), b);
#pragma unroll
                    for (int mt = 0; mt < kMt; ++mt) {
                        mma_bf16(o[mt][2 * dp], pf[mt][kk], b[0], b[1]);
                        mma_bf16(o[mt][2 * dp + 1], pf[mt][kk], b[2], b[3]);
                    }
                }
            }
        }
        __syncthreads();  // every warp is done with this buffer before the next iteration refills it
    }
    asm volatile("cp.async.wait_all;" ::: "memory");  // no tile (q_len > k_len): the Q loads are still in flight

    // Epilogue: quad row sums, normalize, bf16 pairs. A row with no key at all (q_len > k_len) is written as 0.
#pragma unroll
    for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float total = row_sum[mt][r];
            total += __shfl_xor_sync(0xffffffffu, total, 1);
            total += __shfl_xor_sync(0xffffffffu, total, 2);
            const int row = m0 + warp_row + mt * 16 + group + 8 * r;
            if (row >= q_len) {
                continue;
            }
            const float inv = total > 0.0f ? 1.0f / total : 0.0f;
            uint16_t* dst = p.out + int64_t{q_begin + row} * p.out_stride + int64_t{head} * kDv + quad_lane * 2;
#pragma unroll
            for (int n = 0; n < kDv / 8; ++n) {
                *reinterpret_cast<uint32_t*>(dst + n * 8) = pack_bf16(o[mt][n][2 * r] * inv, o[mt][n][2 * r + 1] * inv);
            }
        }
    }
}

inline constexpr int kGatherThreads = 256;

// One thread per 8-value unit of an output row: 16-byte copies from a BF16 cache; 8 e4m3 codes -> bf16 * kv_scale.
// grid: [ceil(num_rows * entry / 8 / 256)], block: 256.
__global__ void __launch_bounds__(kGatherThreads) latent_gather_kernel(const __grid_constant__ LatentGatherParams p) {
    const int units_per_row = p.entry / 8;
    const int64_t u = int64_t{blockIdx.x} * kGatherThreads + threadIdx.x;
    if (u >= p.num_rows * units_per_row) {
        return;
    }
    const int64_t row = u / units_per_row;
    const int unit = static_cast<int>(u % units_per_row);
    const int64_t src = p.slots[row] * p.entry + unit * 8;
    uint4* dst = reinterpret_cast<uint4*>(p.out + row * p.entry + unit * 8);
    if (!p.cache.fp8) {
        *dst = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p.cache.data) + src);
        return;
    }
    const uint2 raw = *reinterpret_cast<const uint2*>(static_cast<const uint8_t*>(p.cache.data) + src);
    const uint32_t words[2] = {raw.x, raw.y};
    uint32_t packed[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const uint32_t two = (words[i / 2] >> (16 * (i % 2))) & 0xffffu;
        const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two), __NV_E4M3);
        const float2 f = __half22float2(__half2(h));
        packed[i] = pack_bf16(f.x * p.cache.kv_scale, f.y * p.cache.kv_scale);
    }
    *dst = make_uint4(packed[0], packed[1], packed[2], packed[3]);
}

}  // namespace k2::cuda::kernels::mla_prefill

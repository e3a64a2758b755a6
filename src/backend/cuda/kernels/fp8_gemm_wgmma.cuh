// FP8 block-scaled GEMM for decode batches (m <= 128), v5: TMA + 128B swizzle + mbarrier ring + wgmma with the
// WEIGHTS as wgmma's M side (DeepGEMM's pipeline structure with A and B swapped).
//
// y^T[n, m] = w[n, k] . x[m, k]^T, computed per CTA for 128 or 64 weight rows (inside one 128-row scale block) and
// every token: one or two consumer warpgroups each issue wgmma.m64nNk32 e4m3 (N = the token count padded to 16, 32,
// 64 or 128; the padded token rows arrive as zeros from TMA's out-of-bounds fill) over a 64 x 128 weight tile and the
// N x 128 activation tile, and promote the block's fp32 sums into the running accumulators with
// w_scale[n / 128, kb] * x_scale[kb, m] (one scale per accumulator column = per token). One producer warp keeps a
// kStages-deep ring full: per stage one TMA of the kRows x 128 weight tile, one of the N x 128 activation tile (both
// 128B-swizzled, completing on the stage's full mbarrier with expect_tx) and N + 1 scales by cp.async (arriving on the
// same mbarrier). Split-K: a cluster of `splits` CTAs along grid y shares the k blocks; partial sums are reduced
// through distributed shared memory (deterministic, no workspace). Session 8 added three knobs that change no result:
// programmatic dependent launch (the first ring's weight tiles are in flight before griddepcontrol.wait, which guards
// every read of x / the scales and every write of y), an L2 bulk prefetch of each weight row l2_ahead k blocks past
// the ring, and TMA multicast of the activation tile to kMcast CTAs along n (measured: the last two lose; off by
// default). History and measurements: docs/perf/kernels.md ("FP8 GEMM v5", "Session 8: v5 at m 16-128").
#pragma once

#include <cooperative_groups.h>
#include <cuda.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "backend/cuda/fp8_gemm.h"
#include "backend/cuda/kernels/sm90_ptx.cuh"

namespace k2::cuda::kernels {

using sm90::cp_async4_zfill;
using sm90::cp_async_mbar_arrive;
using sm90::fence_registers;
using sm90::mbar_arrive;
using sm90::mbar_arrive_expect_tx;
using sm90::mbar_init;
using sm90::mbar_wait;
using sm90::smem_addr;
using sm90::smem_desc_sw128;
using sm90::tma_load_2d;

// mbarrier.expect_tx without an arrival: raises the stage's transaction count before its weight TMA is issued ahead
// of griddepcontrol.wait; the producer's plain arrive follows once the scales and the activation TMA are issued.
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
    asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes)
                 : "memory");
}

// Programmatic dependent launch: waits for the whole previous grid and its writes (returns at once when the kernel
// was not launched as a programmatic dependent).
__device__ __forceinline__ void grid_dependency_wait() {
    asm volatile("griddepcontrol.wait;" ::: "memory");
}

// Arrives on the mbarrier at bar's offset in the shared memory of cluster CTA `cta_rank` (release, cluster scope).
__device__ __forceinline__ void mbar_arrive_cluster(uint64_t* bar, uint32_t cta_rank) {
    asm volatile(
        "{\n.reg .b32 remote;\nmapa.shared::cluster.u32 remote, %0, %1;\n"
        "mbarrier.arrive.release.cluster.shared::cluster.b64 _, [remote];\n}\n" ::"r"(smem_addr(bar)),
        "r"(cta_rank)
        : "memory");
}

// TMA box into the shared memory of every cluster CTA in `mask` (same offset in each), completing on the mbarrier
// at bar's offset in each of them.
__device__ __forceinline__ void tma_load_2d_multicast(void* dst, const CUtensorMap* map, uint64_t* bar, int c0, int c1,
                                                      uint16_t mask) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, "
        "{%4, %5}], [%2], %3;" ::"r"(smem_addr(dst)),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_addr(bar)), "h"(mask), "r"(c0), "r"(c1)
        : "memory");
}

// Lets a programmatic dependent of this grid start its launch (a no-op without one); it still waits for this whole
// grid before reading what this grid writes.
__device__ __forceinline__ void launch_dependents() {
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

inline constexpr int kWgmmaMaxSplits = 8;  // a portable cluster

// Shared-memory plan of one instantiation (all tiles 1024-byte aligned, as the 128B swizzle needs). kConsumers
// warpgroups of 64 weight rows each: 2 (128 rows = one scale block, one CTA per SM with a ~200 KB ring) or 1
// (64 rows, a ~100 KB ring so that two CTAs share an SM).
template <int kN, int kConsumers>
struct WgmmaLayout {
    static constexpr int kRows = 64 * kConsumers;         // weight rows (n) per CTA
    static constexpr int kProducerWarp = 4 * kConsumers;  // after the consumer warpgroups
    static constexpr int kThreads = 128 * kConsumers + 32;
    static constexpr int kWTileBytes = kRows * 128;  // [kRows, 128 k] e4m3
    static constexpr int kXTileBytes = kN * 128;     // [kN tokens, 128 k] e4m3
    static constexpr int kScaleFloats = kN + 4;      // kN activation scales, the weight scale, padding
    static constexpr int kStageBytes = kWTileBytes + kXTileBytes + kScaleFloats * 4;
    static constexpr int kBudget = kConsumers == 2 ? 200 * 1024 : 100 * 1024;
    static constexpr int kStages = kBudget / kStageBytes < 12 ? kBudget / kStageBytes : 12;
    static constexpr int kXOffset = kStages * kWTileBytes;
    static constexpr int kScaleOffset = kXOffset + kStages * kXTileBytes;
    static constexpr int kRingBytes = kScaleOffset + kStages * kScaleFloats * 4;
    static constexpr int kRedStride = kRows + 4;  // floats per token row of the reduction buffer
    static constexpr int kRedBytes = kN * kRedStride * 4;
    static constexpr int kSmemBytes = (kRingBytes > kRedBytes ? kRingBytes : kRedBytes) + 1024;  // + align slack
    static_assert(kStages >= 4, "pipeline too shallow");
};

// wgmma.m64nNk32 e4m3 x e4m3 -> f32, both operands from shared memory; scale_d = 0 overwrites d.
template <int kN>
struct WgmmaE4m3;

template <>
struct WgmmaE4m3<16> {
    __device__ __forceinline__ static void run(float (&d)[8], uint64_t desc_a, uint64_t desc_b, int scale_d) {
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n16k32.f32.e4m3.e4m3 {"
            "%0,%1,%2,%3,%4,%5,%6,%7"
            "}, %8, %9, p, 1, 1;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
            : "l"(desc_a), "l"(desc_b), "r"(scale_d));
    }
};

template <>
struct WgmmaE4m3<32> {
    __device__ __forceinline__ static void run(float (&d)[16], uint64_t desc_a, uint64_t desc_b, int scale_d) {
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n32k32.f32.e4m3.e4m3 {"
            "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15"
            "}, %16, %17, p, 1, 1;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
            : "l"(desc_a), "l"(desc_b), "r"(scale_d));
    }
};

template <>
struct WgmmaE4m3<64> {
    __device__ __forceinline__ static void run(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int scale_d) {
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 {"
            "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,"
            "%29,%30,%31"
            "}, %32, %33, p, 1, 1;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
            : "l"(desc_a), "l"(desc_b), "r"(scale_d));
    }
};

template <>
struct WgmmaE4m3<128> {
    __device__ __forceinline__ static void run(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int scale_d) {
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {"
            "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,"
            "%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%"
            "55,%56,%57,%58,%59,%60,%61,%62,%63"
            "}, %64, %65, p, 1, 1;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
              "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
              "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
              "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
              "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
            : "l"(desc_a), "l"(desc_b), "r"(scale_d));
    }
};

// acc += part * x_scale[token] * w_scale. Tokens' scales are read in pairs: accumulator columns 8 j + 2 q and
// 8 j + 2 q + 1 of quad lane q. (Also the grouped MoE kernel's, moe_gemm_wgmma.cuh.)
template <int kN>
__device__ __forceinline__ void promote_scaled(float (&acc)[kN / 2], const float (&part)[kN / 2], const float* scales,
                                               float w_scale, int quad_lane) {
#pragma unroll
    for (int j = 0; j < kN / 8; ++j) {
        const float2 s = *reinterpret_cast<const float2*>(scales + 8 * j + 2 * quad_lane);
        const float s0 = s.x * w_scale;
        const float s1 = s.y * w_scale;
        acc[4 * j + 0] += part[4 * j + 0] * s0;
        acc[4 * j + 1] += part[4 * j + 1] * s1;
        acc[4 * j + 2] += part[4 * j + 2] * s0;
        acc[4 * j + 3] += part[4 * j + 3] * s1;
    }
}

// The same with the stage's weight scale, which follows its kN token scales.
template <int kN>
__device__ __forceinline__ void promote(float (&acc)[kN / 2], const float (&part)[kN / 2], const float* scales,
                                        int quad_lane) {
    promote_scaled<kN>(acc, part, scales, scales[kN], quad_lane);
}

// One 128-k block of a warpgroup: part = w_tile (64 weight rows) . x_tile^T (kN tokens) over 4 wgmma k32 steps,
// overwriting part, waited for (also the grouped MoE kernel's, moe_gemm_wgmma.cuh).
template <int kN>
__device__ __forceinline__ void mma_k_block(float (&part)[kN / 2], const uint8_t* w_tile, const uint8_t* x_tile) {
    fence_registers(part);
    sm90::wgmma_fence();
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        WgmmaE4m3<kN>::run(part, smem_desc_sw128(w_tile + 32 * j), smem_desc_sw128(x_tile + 32 * j), j);
    }
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>();
    fence_registers(part);
}

// The consumer side of one warpgroup: for each k block, 4 wgmma k32 steps into a fresh partial sum, the wait,
// the promotion into acc and the release of the stage. (Overlapping the next block's MMAs with the promotion, two
// partial sums in flight, measured 0-5% slower: docs/perf/kernels.md.)
// kMcast > 1: the stage's activation tile came from every CTA of the multicast group (cluster ranks group_base ..
// + kMcast - 1), so the stage is released to each of them (their producers write into ours).
template <int kN, int kConsumers, int kMcast>
__device__ __forceinline__ void consume(float (&acc)[kN / 2], uint8_t* smem, const float* scale_ring,
                                        uint64_t* full_bar, uint64_t* empty_bar, int wg, int lane, int num_iters,
                                        int group_base) {
    using L = WgmmaLayout<kN, kConsumers>;
    float part[kN / 2];
#pragma unroll
    for (int i = 0; i < kN / 2; ++i)
        part[i] = 0.0f;
    for (int i = 0; i < num_iters; ++i) {
        const int s = i % L::kStages;
        mbar_wait(&full_bar[s], (i / L::kStages) & 1);
        const uint8_t* w_tile = smem + s * L::kWTileBytes + wg * 64 * 128;  // this warpgroup's 64 rows
        const uint8_t* x_tile = smem + L::kXOffset + s * L::kXTileBytes;
        mma_k_block<kN>(part, w_tile, x_tile);
        promote<kN>(acc, part, scale_ring + s * L::kScaleFloats, lane % 4);
        __syncwarp();
        if constexpr (kMcast == 1) {
            if (lane == 0)
                mbar_arrive(&empty_bar[s]);  // the warp's MMAs and scale reads of stage s are done
        } else if (lane < kMcast) {
            mbar_arrive_cluster(&empty_bar[s], static_cast<uint32_t>(group_base + lane));
        }
    }
}

// One CTA's share of the cluster's split-K sum: rows [kRows] x tokens of y, 4 rows per thread, summed over every
// CTA's red buffer [kN, kRedStride] (distributed shared memory) and stored as bf16. (Loading every quad first and
// storing after measured slower, up to 1.4x at 128 tokens: docs/perf/kernels.md.)
// The split-K peers are the cluster's CTAs of the same x (cluster [kMcast, splits]: linear rank x + kMcast * y).
template <int kN, int kConsumers, int kMcast>
__device__ __forceinline__ void reduce_store(const Fp8GemmParams& p, float* red, int n_tile) {
    namespace cg = cooperative_groups;
    using L = WgmmaLayout<kN, kConsumers>;
    cg::cluster_group cluster = cg::this_cluster();
    const int num_ranks = static_cast<int>(cluster.dim_blocks().y);
    const int rank = static_cast<int>(cluster.block_index().y);
    const int mcast_rank = static_cast<int>(cluster.block_index().x);
    const int tokens = static_cast<int>(p.num_tokens < kN ? p.num_tokens : kN);
    const int num_quads = tokens * (L::kRows / 4);
    const int per_rank = (num_quads + num_ranks - 1) / num_ranks;
    const int quad_end = min(num_quads, (rank + 1) * per_rank);
    const int64_t row_base = static_cast<int64_t>(n_tile) * L::kRows;
    for (int idx = rank * per_rank + static_cast<int>(threadIdx.x); idx < quad_end; idx += L::kThreads) {
        const int token = idx / (L::kRows / 4);
        const int row = (idx % (L::kRows / 4)) * 4;
        float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int q = 0; q < kWgmmaMaxSplits; ++q) {
            if (q < num_ranks) {
                const float4 v = *reinterpret_cast<const float4*>(
                    cluster.map_shared_rank(red, mcast_rank + kMcast * q) + token * L::kRedStride + row);
                sum.x += v.x;
                sum.y += v.y;
                sum.z += v.z;
                sum.w += v.w;
            }
        }
        uint16_t* out = p.y + token * p.y_stride + row_base + row;  // [4] bf16 of y [num_tokens, n]
        const float vals[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            if (row_base + row + e < p.n) {
                const __nv_bfloat16 b = __float2bfloat16(vals[e]);
                out[e] = reinterpret_cast<const uint16_t&>(b);
            }
        }
    }
}

// Bulk L2 prefetch of the CTA's weight rows for the 8 k blocks from `ahead` on (clamped to kb_end): one 1 KB run
// per row, where the TMA boxes take one 128-byte line per row and stage. Rows past n are skipped (TMA zero-fills them).
template <int kRows>
__device__ __forceinline__ void prefetch_weight_rows(const Fp8GemmParams& p, int n_tile, int ahead, int kb_end,
                                                     int lane) {
    if (ahead >= kb_end)
        return;
    const uint32_t bytes = static_cast<uint32_t>(min(8, kb_end - ahead) * 128);
    for (int r = lane; r < kRows; r += 32) {
        const int64_t row = static_cast<int64_t>(n_tile) * kRows + r;
        if (row < p.n)
            sm90::prefetch_l2_bulk(p.w + row * p.k + static_cast<int64_t>(ahead) * 128, bytes);
    }
}

// The producer warp: keeps the ring full. With pdl, the weight tiles of the first ring's worth of stages are issued
// before griddepcontrol.wait (the weights never come from the previous kernel); their stages' transaction counts
// (weights + activations) are raised first with mbar_expect_tx, and the plain arrive follows once the stage's scales
// and activation tile are issued after the wait, so no phase can complete early. Later stages (every stage without
// pdl): arrive.expect_tx, then both TMAs, as in session 4. l2_ahead > 0: every 8 k blocks, prefetch_weight_rows
// l2_ahead blocks past the TMA issue. kMcast > 1: this CTA loads slice mcast_rank of the activation tile (kN / kMcast
// token rows) into the same stage of every CTA of its group (cluster ranks group_base ..); the empty barrier it waits
// on collects the consumers of the whole group, so every destination stage is free. A peer's slice may land before this
// CTA's expect_tx (the transaction count goes negative for a while, as in CUTLASS's multicast pipelines; the pending
// arrival keeps the phase open).
template <int kN, int kConsumers, int kMcast>
__device__ __forceinline__ void produce(const CUtensorMap& tmap_w, const CUtensorMap& tmap_x, const Fp8GemmParams& p,
                                        uint8_t* smem, float* scale_ring, uint64_t* full_bar, uint64_t* empty_bar,
                                        int n_tile, int kb_begin, int num_iters, int l2_ahead, bool pdl, int lane,
                                        int mcast_rank, int group_base) {
    using L = WgmmaLayout<kN, kConsumers>;
    constexpr int kSliceRows = kN / kMcast;
    const int num_kb = static_cast<int>(p.k / 128);
    const int kb_end = kb_begin + num_iters;
    const int num_pre = pdl ? min(num_iters, L::kStages) : 0;  // without pdl: session 4's order, stage by stage
    const bool tile_valid = static_cast<int64_t>(n_tile) * L::kRows < p.n;  // false: a multicast group's padding
    if (lane == 0) {
        for (int i = 0; i < num_pre; ++i) {
            mbar_expect_tx(&full_bar[i], L::kWTileBytes + L::kXTileBytes);
            tma_load_2d(smem + i * L::kWTileBytes, &tmap_w, &full_bar[i], (kb_begin + i) * 128, n_tile * L::kRows);
        }
    }
    if (l2_ahead > 0)
        prefetch_weight_rows<L::kRows>(p, n_tile, kb_begin + l2_ahead, kb_end, lane);
    if (pdl)
        grid_dependency_wait();  // x and its scales may be the previous kernel's output
    const float* w_scale = p.w_scale + (tile_valid ? static_cast<int64_t>(n_tile) * L::kRows / 128 * num_kb : 0);
    for (int i = 0; i < num_iters; ++i) {
        const int s = i % L::kStages;
        const int kb = kb_begin + i;
        if (l2_ahead > 0 && i > 0 && i % 8 == 0)
            prefetch_weight_rows<L::kRows>(p, n_tile, kb + l2_ahead, kb_end, lane);
        if (i >= L::kStages)
            mbar_wait(&empty_bar[s], ((i / L::kStages) - 1) & 1);
        // NOTE: compute-sanitizer racecheck flags these writes against promote()'s reads of the same stage; they
        // are ordered by the stage's mbarriers (RAW: cp.async.mbarrier.arrive on full; WAR: the consumer warps'
        // __syncwarp + arrive on empty, waited above), which racecheck may not model for cp.async.
        float* scales = scale_ring + s * L::kScaleFloats;
        for (int t = lane; t <= kN; t += 32) {
            const bool valid = t == kN ? tile_valid : t < p.num_tokens;
            const float* src =
                t == kN ? w_scale + (valid ? kb : 0) : p.x_scale + (valid ? kb * p.x_scale_stride + t : 0);
            cp_async4_zfill(scales + t, src, valid ? 4 : 0);
        }
        cp_async_mbar_arrive(&full_bar[s]);
        __syncwarp();
        if (lane == 0) {
            if (i < num_pre) {
                mbar_arrive(&full_bar[s]);  // its weight tile is already in flight
            } else {
                mbar_arrive_expect_tx(&full_bar[s], L::kWTileBytes + L::kXTileBytes);
                tma_load_2d(smem + s * L::kWTileBytes, &tmap_w, &full_bar[s], kb * 128, n_tile * L::kRows);
            }
            uint8_t* x_tile = smem + L::kXOffset + s * L::kXTileBytes;
            if constexpr (kMcast == 1) {
                tma_load_2d(x_tile, &tmap_x, &full_bar[s], kb * 128, 0);
            } else {
                const uint16_t mask = static_cast<uint16_t>(((1u << kMcast) - 1u) << group_base);
                tma_load_2d_multicast(x_tile + mcast_rank * kSliceRows * 128, &tmap_x, &full_bar[s], kb * 128,
                                      mcast_rank * kSliceRows, mask);
            }
        }
    }
}

// grid: [ceil(n / kRows) rounded up to kMcast, splits], cluster [kMcast, splits], block kThreads. tmap_w: w [n, k]
// with box [kRows, 128]; tmap_x: x [num_tokens, k] (row stride x_stride) with box [kN / kMcast, 128]; both
// 128B-swizzled, zero out-of-bounds fill. l2_ahead: the L2 prefetch distance in k blocks (0: none). pdl != 0: the
// programmatic-dependent-launch side (weights issued before griddepcontrol.wait, dependents triggered at the start);
// it must be set whenever the launch carries programmatic stream serialization, and may be set without it (a
// diagnostic: the issue order alone). The result is the same bits for every pdl, l2_ahead and kMcast.
template <int kN, int kConsumers, int kMcast>
__global__ void __launch_bounds__(WgmmaLayout<kN, kConsumers>::kThreads, 1)
    fp8_gemm_wgmma_kernel(const __grid_constant__ CUtensorMap tmap_w, const __grid_constant__ CUtensorMap tmap_x,
                          const __grid_constant__ Fp8GemmParams p, int kb_per_split, int l2_ahead, int pdl) {
    using L = WgmmaLayout<kN, kConsumers>;
    static_assert(kMcast == 1 || (kN / kMcast) % 8 == 0, "a multicast slice must be whole 8-row swizzle atoms");
    extern __shared__ uint8_t smem_raw[];
    __shared__ uint64_t full_bar[L::kStages];   // TMA bytes + cp.async scales landed
    __shared__ uint64_t empty_bar[L::kStages];  // every consumer warp (of the multicast group) is done with the stage
    uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
    float* scale_ring = reinterpret_cast<float*>(smem + L::kScaleOffset);  // [kStages, kScaleFloats]

    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int num_kb = static_cast<int>(p.k / 128);
    const int kb_begin = static_cast<int>(blockIdx.y) * kb_per_split;
    const int kb_end = min(num_kb, kb_begin + kb_per_split);
    const int num_iters = kb_end - kb_begin;  // >= 1: the launcher leaves no split empty
    const int n_tile = static_cast<int>(blockIdx.x);
    const dim3 in_cluster = cooperative_groups::this_cluster().block_index();
    const int mcast_rank = static_cast<int>(in_cluster.x);
    const int group_base = static_cast<int>(in_cluster.y) * kMcast;  // linear cluster rank of (0, y)

    if (threadIdx.x == 0) {
#pragma unroll
        for (int s = 0; s < L::kStages; ++s) {
            mbar_init(&full_bar[s], 1);
            mbar_init(&empty_bar[s], 4 * kConsumers * kMcast);
        }
        sm90::fence_mbarrier_init();
        // The descriptors' first fetch overlaps the barrier setup instead of the first TMA.
        sm90::prefetch_tensormap(&tmap_w);
        sm90::prefetch_tensormap(&tmap_x);
    }
    if constexpr (kMcast > 1) {
        cooperative_groups::this_cluster().sync();  // the peers' barriers exist before anything is multicast
    } else {
        __syncthreads();
    }
    // Every CTA of this grid is resident once all have passed here, so a dependent's CTAs (launched with programmatic
    // stream serialization) may take SMs as ours leave; they wait for this whole grid before reading its output.
    if (pdl != 0)
        launch_dependents();

    float acc[kN / 2];
#pragma unroll
    for (int i = 0; i < kN / 2; ++i)
        acc[i] = 0.0f;

    if (warp == L::kProducerWarp) {
        produce<kN, kConsumers, kMcast>(tmap_w, tmap_x, p, smem, scale_ring, full_bar, empty_bar, n_tile, kb_begin,
                                        num_iters, l2_ahead, pdl != 0, lane, mcast_rank, group_base);
    } else {
        if (pdl != 0)
            grid_dependency_wait();  // y may still be read by the previous kernel
        consume<kN, kConsumers, kMcast>(acc, smem, scale_ring, full_bar, empty_bar, warp / 4, lane, num_iters,
                                        group_base);
    }

    // Partial sums -> red[token][row] (reusing the ring: every stage has been consumed).
    __syncthreads();
    float* red = reinterpret_cast<float*>(smem);  // [kN, kRedStride]
    if (warp < L::kProducerWarp) {
        const int row = warp * 16 + lane / 4;  // warp w of warpgroup g owns rows 64 g + 16 (w % 4) .. + 15
#pragma unroll
        for (int j = 0; j < kN / 8; ++j) {
            const int token = 8 * j + 2 * (lane % 4);
            red[token * L::kRedStride + row] = acc[4 * j + 0];
            red[(token + 1) * L::kRedStride + row] = acc[4 * j + 1];
            red[token * L::kRedStride + row + 8] = acc[4 * j + 2];
            red[(token + 1) * L::kRedStride + row + 8] = acc[4 * j + 3];
        }
    }
    cooperative_groups::this_cluster().sync();
    reduce_store<kN, kConsumers, kMcast>(p, red, n_tile);
    cooperative_groups::this_cluster().sync();  // nobody leaves while a peer still reads its shared memory
}

}  // namespace k2::cuda::kernels

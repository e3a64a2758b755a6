// Grouped FP8 GEMM for MoE PREFILL in one persistent launch (DeepGEMM's "contiguous" grouped layout, without its
// per-expert padding to the tile): the permuted TOKENS are wgmma's M side, the expert weights its N side.
//
// Tile: kBlockM rows of x (one expert's; 64 or 128) x 256 weight rows (n), k in blocks of 128. Two consumer
// warpgroups issue wgmma.m64n128k32 e4m3 (both operands from shared memory, 128B swizzle):
//   kBlockM 64:  both warpgroups take the 64 rows, each its half of the 256 weight rows (acc 64 floats).
//   kBlockM 128: each warpgroup takes 64 of the rows and both weight halves one after the other (acc 128 floats +
//                a 64-float partial sum: setmaxnreg gives the consumers 232 registers, the producer 40).
// One producer warp issues per stage the two TMAs (x box [kBlockM, 128], w box [256, 128], completing on the
// stage's full mbarrier with expect_tx) and the kBlockM + 2 scales by cp.async (arriving on the same barrier).
// Per 128-k block the block's fp32 sums are promoted: acc += part * x_scale(row, kb) * w_scale[e, n / 128, kb].
// Output y [P, n] bf16 straight from the registers (4-byte stores; rows outside the tile's own range masked).
//
// Tiles of an expert: ceil(rows_e / kBlockM); the last one is anchored at the expert's END (box rows
// [end - kBlockM, end)), so no tile ever reads a row at or past P: its rows before its own range belong to the
// previous expert (or are negative: TMA fills them with zeros) and are never stored. So x's tensor map needs no row
// count from the host (P lives on the device). With kBlockM 128 a warpgroup whose 64 rows are all outside the
// tile's range (a tail of <= 64 rows) skips its MMAs: the MMA work is that of 64-row tiles, while the weight tile
// (the bulk of the bytes: 32 KB a stage) serves 128 rows instead of 64.
//
// Schedule: every CTA (one per SM) builds moe_gemm_wgmma.cuh's schedule from the device offsets with passes of
// kBlockM rows (s_unit = exclusive prefix of the tiles per expert). Two orders of the items:
//   m-tile major: item = m_tile * n_blocks + n_block (a wave covers every n block of a few m tiles);
//   expert major: item = s_unit[e] * n_blocks + n_block * tiles_e + j (an expert's tiles of one n block are
//                 adjacent, so they read the same weight tile at the same time, whatever the wave boundaries).
// Dealt round-robin; the ring runs on across items (no refill per tile), so the epilogue overlaps the next loads.
// CUDA-graph capturable: nothing reads the offsets on the host.
//
// kCluster 2 (kBlockM 128 only): clusters of 2 CTAs take two consecutive m tiles of one expert at the same n block
// (schedule passes of 256 rows; the second CTA of an expert's odd last tile gets no rows and only keeps the ring
// going); each CTA loads its own x tile and one 128-row half of the weight tile, multicast to both CTAs, so the
// weight bytes through L2 halve and both tiles use them at the same moment. A stage is free for the producers only
// once the consumers of BOTH CTAs released it: every consumer warp arrives on its own and its peer's empty barrier.
#pragma once

#include <cooperative_groups.h>
#include <cuda.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "backend/cuda/kernels/moe_gemm_wgmma.cuh"
#include "backend/cuda/kernels/sm90_ptx.cuh"
#include "backend/cuda/moe_ops.h"
#include "backend/cuda/moe_prefill_gemm_detail.h"

namespace k2::cuda::kernels {

// kBlockM 192 / 256 (moe_prefill_gemm_boxed.cuh): kBlockM rows x 128 weight rows, x loaded in 64-row boxes.
template <int kBlockM>
struct MoePrefillLayout {
    static_assert(kBlockM == 64 || kBlockM == 128 || kBlockM == 192 || kBlockM == 256, "tile rows");
    static constexpr bool kBoxed = kBlockM >= 192;
    // Weight rows per tile: two halves of 128 (64 / 128), one block of 128 (boxed).
    static constexpr int kBlockN = kBoxed ? 128 : detail::kMoePrefillBlockN;
    static constexpr int kAcc = kBlockM == 64 || kBlockM == 192 ? 64 : 128;  // accumulator floats per consumer thread
    static constexpr int kProducerWarp = kBlockM == 192 ? 12 : 8;            // = the consumer warps (3 or 2 warpgroups)
    // 64: a producer warp; else a whole producer warpgroup (setmaxnreg).
    static constexpr int kThreads = kBlockM == 64 ? 288 : 32 * kProducerWarp + 128;
    // setmaxnreg of the producer / consumer warpgroups without and with clusters (128 / boxed tiles), filling the
    // 64K registers; the multicast producer needs more to run without spills.
    static constexpr int kProducerRegs[2] = {kBlockM == 192 ? 32 : 40, 72};
    static constexpr int kConsumerRegs[2] = {kBlockM == 192 ? 160 : 232, kBlockM == 192 ? 144 : 216};
    static constexpr int kXTileBytes = kBlockM * 128;  // [kBlockM rows, 128 k] e4m3
    static constexpr int kWTileBytes = kBlockN * 128;  // [kBlockN rows, 128 k] e4m3
    // x scales [kBlockM], then the weight scales (of the halves at [kBlockM] + 0/1; of the block at [kBlockM]).
    static constexpr int kScaleFloats = kBlockM + 4;
    static constexpr int kStages = kBlockM == 64 || kBlockM == 192 ? 5 : 4;  // 5 x 40 KB or 4 x 48 KB
    static constexpr int kWOffset = kStages * kXTileBytes;
    static constexpr int kScaleOffset = kWOffset + kStages * kWTileBytes;
    static constexpr int kSmemBytes = kScaleOffset + kStages * kScaleFloats * 4 + 1024;  // + alignment slack
    static_assert(kSmemBytes <= 227 * 1024 - 2 * (detail::kMoeWgmmaMaxExperts + 1) * 4 - 256, "ring too big");
};

// One tile of x: the expert's rows [valid_begin, valid_end) live at box rows [valid_begin - row0, ...); row0 may
// precede valid_begin (the anchored tail) and may be negative.
struct PrefillTile {
    int expert;
    int n_block;
    int row0;         // first x row the TMA box covers
    int valid_begin;  // first row of this tile's own range (>= offsets[expert])
    int valid_end;    // one past its last (<= offsets[expert + 1])
    int expert_begin;
    int rows_e;
};

// Item -> tile. A unit is kCluster consecutive tiles of one expert (passes of kBlockM * kCluster rows); `rank`
// picks the CTA's tile inside it. A tile past the expert's rows (the odd last tile of a pair) has an empty range and
// its box on the expert's last kBlockM rows (read, never used).
template <int kBlockM, int kCluster>
__device__ __forceinline__ PrefillTile decode_prefill_tile(const MoeSchedule& sc, int64_t item, bool expert_major,
                                                           int rank) {
    const int n_blocks = sc.tiles;
    const int e = expert_of_unit(sc, static_cast<int>(item / n_blocks));
    int j = 0;  // the unit inside the expert
    PrefillTile t;
    t.expert = e;
    if (expert_major) {
        const int units_e = sc.s_unit[e + 1] - sc.s_unit[e];
        const int local = static_cast<int>(item - static_cast<int64_t>(sc.s_unit[e]) * n_blocks);
        t.n_block = local / units_e;
        j = local % units_e;
    } else {
        t.n_block = static_cast<int>(item % n_blocks);
        j = static_cast<int>(item / n_blocks) - sc.s_unit[e];
    }
    t.expert_begin = sc.s_off[e];
    t.rows_e = sc.s_off[e + 1] - sc.s_off[e];
    const int end = t.expert_begin + t.rows_e;
    t.valid_begin = min(end, t.expert_begin + (j * kCluster + rank) * kBlockM);
    t.valid_end = min(t.valid_begin + kBlockM, end);
    t.row0 = min(t.valid_begin, end - kBlockM);
    return t;
}

// TMA with multicast: the box lands at the same shared-memory offset in every CTA of cta_mask and completes on
// the mbarrier at bar's offset in each.
__device__ __forceinline__ void prefill_tma_load_multicast(void* dst, const CUtensorMap* map, uint64_t* bar, int c0,
                                                           int c1, uint16_t cta_mask) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
        " [%0], [%1, {%3, %4}], [%2], %5;" ::"r"(sm90::smem_addr(dst)),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(sm90::smem_addr(bar)), "r"(c0), "r"(c1), "h"(cta_mask)
        : "memory");
}

// Arrives on the mbarrier at bar's offset in CTA `cta` of the cluster.
__device__ __forceinline__ void prefill_mbar_arrive_remote(uint64_t* bar, uint32_t cta) {
    uint32_t remote = 0;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(sm90::smem_addr(bar)), "r"(cta));
    asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];" ::"r"(remote) : "memory");
}

// The producer warp: per k block of each item, the x scales of the tile's own rows (zeros elsewhere) and the two
// weight scales by cp.async (every lane arrives on the full barrier once its copies land), then lane 0's expect_tx
// and the two TMAs.
template <int kBlockM, int kCluster>
__device__ __forceinline__ void prefill_produce(const Fp8GroupedGemmParams& p, const CUtensorMap* tmap_x,
                                                const CUtensorMap* tmap_w, const MoeSchedule& sc, uint8_t* smem,
                                                uint64_t* full_bar, uint64_t* empty_bar, int64_t total_items,
                                                bool expert_major, int rank, int lane) {
    using L = MoePrefillLayout<kBlockM>;
    const int num_kb = static_cast<int>(p.k / 128);
    const int n_scale_blocks = static_cast<int>(p.n / 128);
    float* scale_ring = reinterpret_cast<float*>(smem + L::kScaleOffset);  // [kStages, kScaleFloats]
    int64_t it = 0;
    for (int64_t item = blockIdx.x / kCluster; item < total_items; item += gridDim.x / kCluster) {
        const PrefillTile t = decode_prefill_tile<kBlockM, kCluster>(sc, item, expert_major, rank);
        const float* x_scales = p.x_scale + static_cast<int64_t>(t.expert_begin) * num_kb;  // [k / 128, rows_e]
        const int w_row = static_cast<int>(static_cast<int64_t>(t.expert) * p.n + t.n_block * L::kBlockN);
        for (int kb = 0; kb < num_kb; ++kb, ++it) {
            const int s = static_cast<int>(it % L::kStages);
            if (it >= L::kStages) {
                sm90::mbar_wait(&empty_bar[s], static_cast<uint32_t>((it / L::kStages - 1) & 1));
            }
            // NOTE: racecheck may flag these writes against the consumers' reads of the same stage; the stage's
            // mbarriers order them (RAW: cp.async.mbarrier.arrive on full; WAR: the consumers' arrive on empty).
            float* scales = scale_ring + s * L::kScaleFloats;
            for (int r = lane; r < kBlockM; r += 32) {
                const int row = t.row0 + r;
                const bool valid = row >= t.valid_begin && row < t.valid_end;
                const float* src =
                    valid ? x_scales + static_cast<int64_t>(kb) * t.rows_e + (row - t.expert_begin) : p.x_scale;
                sm90::cp_async4_zfill(scales + r, src, valid ? 4 : 0);
            }
            if (lane < 2) {
                const int sb = 2 * t.n_block + lane;  // the half's 128-row scale block (past n / 128: n % 256 = 128)
                const bool valid = sb < n_scale_blocks;
                const float* src =
                    valid ? p.w_scale + (static_cast<int64_t>(t.expert) * n_scale_blocks + sb) * num_kb + kb
                          : p.w_scale;
                sm90::cp_async4_zfill(scales + kBlockM + lane, src, valid ? 4 : 0);
            }
            sm90::cp_async_mbar_arrive(&full_bar[s]);
            __syncwarp();
            if (lane == 0) {
                sm90::mbar_arrive_expect_tx(&full_bar[s], L::kXTileBytes + L::kWTileBytes);
                sm90::tma_load_2d(smem + s * L::kXTileBytes, tmap_x, &full_bar[s], kb * 128, t.row0);
                uint8_t* w_tile = smem + L::kWOffset + s * L::kWTileBytes;
                if constexpr (kCluster == 2) {
                    // This CTA's 128-row half of the weight tile into both CTAs (same offsets, both full barriers).
                    prefill_tma_load_multicast(w_tile + rank * 128 * 128, tmap_w, &full_bar[s], kb * 128,
                                               w_row + rank * 128, 0x3);
                } else {
                    sm90::tma_load_2d(w_tile, tmap_w, &full_bar[s], kb * 128, w_row);
                }
            }
        }
    }
}

// acc[64 h + ...] += part * x_scale(row) * w_scale[half]: thread rows r0 = 16 w + lane / 4 and r0 + 8 of the
// warpgroup's 64 (registers 4 j + 0/1 are row r0, 4 j + 2/3 row r0 + 8; columns 8 j + 2 (lane % 4) + 0/1).
template <int kH, int kAcc>
__device__ __forceinline__ void prefill_promote(float (&acc)[kAcc], const float (&part)[64], float s0, float s1) {
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        acc[64 * kH + 4 * j + 0] += part[4 * j + 0] * s0;
        acc[64 * kH + 4 * j + 1] += part[4 * j + 1] * s0;
        acc[64 * kH + 4 * j + 2] += part[4 * j + 2] * s1;
        acc[64 * kH + 4 * j + 3] += part[4 * j + 3] * s1;
    }
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return reinterpret_cast<const uint32_t&>(v);
}

// 128 columns [col0, col0 + 128) (accumulators acc[64 kH ...]) of the box rows box_row and box_row + 8 into
// y [P, n]; rows outside the tile's own range are skipped.
template <int kH, int kAcc>
__device__ __forceinline__ void prefill_store_cols(const Fp8GroupedGemmParams& p, const PrefillTile& t,
                                                   const float (&acc)[kAcc], int64_t col0, int box_row, int quad_lane) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = t.row0 + box_row + 8 * h;
        if (row < t.valid_begin || row >= t.valid_end) {
            continue;
        }
        uint16_t* y = p.y + static_cast<int64_t>(row) * p.n + col0 + 2 * quad_lane;  // [P, n] row `row`
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            *reinterpret_cast<uint32_t*>(y + 8 * j) =
                pack_bf16x2(acc[64 * kH + 4 * j + 2 * h], acc[64 * kH + 4 * j + 2 * h + 1]);
        }
    }
}

// Weight half `half` (accumulators acc[64 kH ...]) of the rows box_row and box_row + 8 into y [P, n].
template <int kH, int kAcc>
__device__ __forceinline__ void prefill_store_half(const Fp8GroupedGemmParams& p, const PrefillTile& t,
                                                   const float (&acc)[kAcc], int half, int box_row, int quad_lane) {
    const int64_t col0 = static_cast<int64_t>(t.n_block) * 256 + half * 128;
    if (col0 >= p.n) {
        return;  // the second half of the last block where n % 256 == 128
    }
    prefill_store_cols<kH>(p, t, acc, col0, box_row, quad_lane);
}

// 4 wgmma k32 steps of one weight half into part (a fresh partial sum), then the wait.
__device__ __forceinline__ void prefill_mma(float (&part)[64], const uint8_t* x_rows, const uint8_t* w_rows) {
    sm90::fence_registers(part);
    sm90::wgmma_fence();
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        WgmmaE4m3<128>::run(part, sm90::smem_desc_sw128(x_rows + 32 * j), sm90::smem_desc_sw128(w_rows + 32 * j), j);
    }
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>();
    sm90::fence_registers(part);
}

// One consumer warpgroup over all its items: per k block its MMAs (skipped when none of its rows is the tile's
// own), the promotions and the release of the stage; per item the store.
template <int kBlockM, int kCluster>
__device__ __forceinline__ void prefill_consume(const Fp8GroupedGemmParams& p, const MoeSchedule& sc, uint8_t* smem,
                                                uint64_t* full_bar, uint64_t* empty_bar, int64_t total_items,
                                                bool expert_major, int rank, int wg, int warp_in_wg, int lane) {
    using L = MoePrefillLayout<kBlockM>;
    const float* scale_ring = reinterpret_cast<const float*>(smem + L::kScaleOffset);
    const int num_kb = static_cast<int>(p.k / 128);
    const int wg_row = kBlockM == 128 ? 64 * wg : 0;  // this warpgroup's first box row
    const int r0 = wg_row + warp_in_wg * 16 + lane / 4;
    float acc[L::kAcc];
    float part[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) {
        part[i] = 0.0f;
    }
    int64_t it = 0;
    for (int64_t item = blockIdx.x / kCluster; item < total_items; item += gridDim.x / kCluster) {
        const PrefillTile t = decode_prefill_tile<kBlockM, kCluster>(sc, item, expert_major, rank);
        const bool active = t.row0 + wg_row + 64 > t.valid_begin && t.row0 + wg_row < t.valid_end;
#pragma unroll
        for (int i = 0; i < L::kAcc; ++i) {
            acc[i] = 0.0f;
        }
        for (int kb = 0; kb < num_kb; ++kb, ++it) {
            const int s = static_cast<int>(it % L::kStages);
            sm90::mbar_wait(&full_bar[s], static_cast<uint32_t>((it / L::kStages) & 1));
            if (active) {
                const uint8_t* x_rows = smem + s * L::kXTileBytes + wg_row * 128;
                const uint8_t* w_tile = smem + L::kWOffset + s * L::kWTileBytes;
                const float* scales = scale_ring + s * L::kScaleFloats;
                if constexpr (kBlockM == 128) {
                    const float x0 = scales[r0];
                    const float x1 = scales[r0 + 8];
                    prefill_mma(part, x_rows, w_tile);
                    prefill_promote<0>(acc, part, x0 * scales[kBlockM], x1 * scales[kBlockM]);
                    prefill_mma(part, x_rows, w_tile + 128 * 128);
                    prefill_promote<1>(acc, part, x0 * scales[kBlockM + 1], x1 * scales[kBlockM + 1]);
                } else {
                    prefill_mma(part, x_rows, w_tile + wg * 128 * 128);
                    const float w_scale = scales[kBlockM + wg];
                    prefill_promote<0>(acc, part, scales[r0] * w_scale, scales[r0 + 8] * w_scale);
                }
            }
            __syncwarp();
            if (lane == 0) {
                sm90::mbar_arrive(&empty_bar[s]);  // this warp's MMAs and scale reads of stage s are done
                if constexpr (kCluster == 2) {
                    prefill_mbar_arrive_remote(&empty_bar[s],
                                               static_cast<uint32_t>(rank ^ 1));  // the peer multicasts into it
                }
            }
        }
        if (active) {
            if constexpr (kBlockM == 128) {
                prefill_store_half<0>(p, t, acc, 0, r0, lane % 4);
                prefill_store_half<1>(p, t, acc, 1, r0, lane % 4);
            } else {
                prefill_store_half<0>(p, t, acc, wg, r0, lane % 4);
            }
        }
    }
}

// barrier.cluster arrive (release) + wait (acquire) by every thread of both CTAs.
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kRegs));
}

template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kRegs));
}

// grid: one CTA per SM (any count >= 1 is correct; with kCluster 2 an even count in clusters of 2 along x), block
// kThreads, dynamic smem kSmemBytes. tmap_x: x as [rows bound, k] e4m3, box [kBlockM, 128]; tmap_w: w as
// [num_experts * n, k], box [256 / kCluster, 128]; both 128B swizzle with zero out-of-bounds fill. expert_major:
// the item order (see the top of the file).
template <int kBlockM, int kCluster>
__global__ void __launch_bounds__(MoePrefillLayout<kBlockM>::kThreads, 1)
    moe_prefill_gemm_kernel(const __grid_constant__ CUtensorMap tmap_x, const __grid_constant__ CUtensorMap tmap_w,
                            const __grid_constant__ Fp8GroupedGemmParams p, int expert_major) {
    static_assert(kBlockM <= 128, "the boxed tiles are moe_prefill_gemm_boxed_kernel");
    static_assert(kCluster == 1 || (kCluster == 2 && kBlockM == 128), "clusters of 2 with 128-row tiles only");
    using L = MoePrefillLayout<kBlockM>;
    extern __shared__ uint8_t smem_raw[];
    __shared__ uint64_t full_bar[L::kStages];   // TMA bytes + the producer lanes' cp.async scales landed
    __shared__ uint64_t empty_bar[L::kStages];  // all 8 consumer warps (of both CTAs of a cluster) are done
    __shared__ int s_off[detail::kMoeWgmmaMaxExperts + 1];
    __shared__ int s_unit[detail::kMoeWgmmaMaxExperts + 1];
    uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int rank = kCluster == 2 ? static_cast<int>(cooperative_groups::this_cluster().block_rank()) : 0;

    if (threadIdx.x == 0) {
#pragma unroll
        for (int s = 0; s < L::kStages; ++s) {
            sm90::mbar_init(&full_bar[s], 1);
            sm90::mbar_init(&empty_bar[s], 8 * kCluster);
        }
        sm90::fence_mbarrier_init();
        sm90::prefetch_tensormap(&tmap_x);
        sm90::prefetch_tensormap(&tmap_w);
    }
    build_schedule<kBlockM * kCluster>(p, s_off, s_unit);  // its __syncthreads also publish the barrier init
    if constexpr (kCluster == 2) {
        cluster_sync();  // the peer's barriers exist before anything reaches them
    }
    const int n_blocks = static_cast<int>((p.n + L::kBlockN - 1) / L::kBlockN);
    const MoeSchedule sc{s_off, s_unit, p.num_experts, n_blocks};
    const int64_t total_items = static_cast<int64_t>(s_unit[p.num_experts]) * n_blocks;
    if (static_cast<int64_t>(blockIdx.x / kCluster) >= total_items) {
        return;  // no work for this CTA (nor its peer: same items): exit before any TMA
    }
    if (warp >= L::kProducerWarp) {
        if constexpr (kBlockM == 128) {
            // The whole producer warpgroup; warps 9-11 only give their registers back. (The multicast producer needs
            // 72 to run without spills: 128 x 72 + 256 x 216 fits the 64K registers.)
            setmaxnreg_dec<L::kProducerRegs[kCluster - 1]>();
        }
        if (warp == L::kProducerWarp) {
            prefill_produce<kBlockM, kCluster>(p, &tmap_x, &tmap_w, sc, smem, full_bar, empty_bar, total_items,
                                               expert_major != 0, rank, lane);
        }
        if constexpr (kCluster == 2) {
            cluster_sync();  // see below
        }
    } else {
        if constexpr (kBlockM == 128) {
            setmaxnreg_inc<L::kConsumerRegs[kCluster - 1]>();
        }
        prefill_consume<kBlockM, kCluster>(p, sc, smem, full_bar, empty_bar, total_items, expert_major != 0, rank,
                                           warp / 4, warp % 4, lane);
        if constexpr (kCluster == 2) {
            // Nobody leaves while the peer may still arrive on this CTA's barriers (its consumers' last releases).
            // Inside each role's branch: code after the if / else would defeat the per-role register counts.
            cluster_sync();
        }
    }
}

}  // namespace k2::cuda::kernels

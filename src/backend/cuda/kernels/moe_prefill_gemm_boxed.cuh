// The "boxed" tiles of the grouped FP8 GEMM of MoE prefill (block_m 192 and 256; the 64- / 128-row tiles and the
// shared pieces are in moe_prefill_gemm.cuh): a CTA tile of kBlockM rows x 128 weight rows, so that at an 8k
// prefill of Kimi-K2 (~170 rows per expert) an expert is ONE m tile and each of its weight tiles is read by exactly
// one CTA: the weights come from HBM once and through L2 once, by construction, instead of once per 128-row m tile
// from CTAs that drift apart (ncu on the 128 x 256 tiles: 26 GB of DRAM reads for 11.3 GB of weights, L2 at 96%).
// The x rows are re-read once per 128-column n block instead; they are few (an expert's ~1.2 MB, read by the
// ~32 CTAs of its n blocks at about the same time: L2 hits).
//
// x is loaded in 64-row TMA boxes (box q = rows [row0 + 64 q, + 64), landing at q * 8 KB: with the 128B swizzle
// the layout equals one kBlockM-row box); a box without rows of the tile's own range is neither loaded nor read
// (expect_tx counts only the loaded ones), so x moves through L2 padded to 64 rows, not kBlockM. Each box is one
// wgmma.m64n128k32 chain against the whole weight tile, then the promotion.
//   kBlockM 256: 4 boxes, 2 consumer warpgroups; warpgroup w takes the boxes w and 2 + w (interleaved, so that an
//                anchored tail of 65..128 rows still feeds both): acc [2][64] + part 64 floats (setmaxnreg 232 / 40,
//                with clusters 216 / 72; 4 stages x 48 KB). A 129..192-row expert gives one warpgroup two chains,
//                the other one.
//   kBlockM 192: 3 boxes, 3 consumer warpgroups of one box each (balanced for 129..192 rows, the bulk at 8k):
//                acc 64 + part 64 floats (setmaxnreg 160 / 32, with clusters 144 / 72; 5 stages x 40 KB).
// Promotion, stores and determinism as in moe_prefill_gemm.cuh: acc += part * (x_scale * w_scale), so an element is
// bitwise the same in every tile shape.
//
// kCluster 2: clusters of 2 CTAs take the n blocks 2 j and 2 j + 1 of one m tile (the second CTA of an odd last
// pair recomputes the last n block and stores nothing); each loads every other one of the tile's loaded x boxes by
// TMA multicast into both CTAs, so the x bytes through L2 halve too, and its own weight tile. A stage is free for
// the producers only once the consumers of BOTH CTAs released it (each consumer warp arrives on its own and its
// peer's empty barrier), as in the 128-row tile's clusters.
//
// Measured (H200, docs/perf/moe-prefill-gemm.md "Session 8"): 256 without clusters is the fastest shape at an 8k
// prefill (the model's choice from 128 rows per expert on); 192 and both cluster forms are slower and stay options.
#pragma once

#include "backend/cuda/kernels/moe_prefill_gemm.cuh"

namespace k2::cuda::kernels {

// Bit q: box q (rows [row0 + 64 q, row0 + 64 q + 64)) holds rows of the tile's own range.
template <int kBlockM>
__device__ __forceinline__ uint32_t boxed_box_mask(const PrefillTile& t) {
    uint32_t mask = 0;
#pragma unroll
    for (int q = 0; q < kBlockM / 64; ++q) {
        const int lo = t.row0 + 64 * q;
        if (lo + 64 > t.valid_begin && lo < t.valid_end) {
            mask |= 1u << q;
        }
    }
    return mask;
}

// Item -> tile of this CTA: sc.tiles counts groups of kCluster n blocks; the CTA of `rank` takes n block
// kCluster * group + rank, clamped to the last one (own = false: computed, not stored).
template <int kBlockM, int kCluster>
__device__ __forceinline__ PrefillTile decode_boxed_tile(const MoeSchedule& sc, int64_t item, bool expert_major,
                                                         int rank, int n_blocks, bool& own) {
    PrefillTile t = decode_prefill_tile<kBlockM, 1>(sc, item, expert_major, 0);
    const int n_block = t.n_block * kCluster + rank;
    own = n_block < n_blocks;
    t.n_block = min(n_block, n_blocks - 1);
    return t;
}

// The producer warp: per k block the kBlockM x scales (zeros outside the tile's own rows) and the block's weight scale
// by cp.async (every lane arrives on the full barrier once its copies land), then lane 0's expect_tx and the TMAs
// (the loaded x boxes, with clusters this CTA's share of them multicast to both, and the [128, 128] weight tile).
template <int kBlockM, int kCluster>
__device__ __forceinline__ void boxed_produce(const Fp8GroupedGemmParams& p, const CUtensorMap* tmap_x,
                                              const CUtensorMap* tmap_w, const MoeSchedule& sc, uint8_t* smem,
                                              uint64_t* full_bar, uint64_t* empty_bar, int64_t total_items,
                                              bool expert_major, int rank, int lane) {
    using L = MoePrefillLayout<kBlockM>;
    const int num_kb = static_cast<int>(p.k / 128);
    const int n_scale_blocks = static_cast<int>(p.n / 128);
    float* scale_ring = reinterpret_cast<float*>(smem + L::kScaleOffset);  // [kStages, kScaleFloats]
    int64_t it = 0;
    for (int64_t item = blockIdx.x / kCluster; item < total_items; item += gridDim.x / kCluster) {
        bool own = true;
        const PrefillTile t = decode_boxed_tile<kBlockM, kCluster>(sc, item, expert_major, rank, n_scale_blocks, own);
        const uint32_t mask = boxed_box_mask<kBlockM>(t);
        const uint32_t tx_bytes = static_cast<uint32_t>(__popc(mask)) * 64 * 128 + L::kWTileBytes;
        const float* x_scales = p.x_scale + static_cast<int64_t>(t.expert_begin) * num_kb;  // [k / 128, rows_e]
        const float* w_scales = p.w_scale + (static_cast<int64_t>(t.expert) * n_scale_blocks + t.n_block) * num_kb;
        const int w_row = static_cast<int>(static_cast<int64_t>(t.expert) * p.n + t.n_block * L::kBlockN);
        for (int kb = 0; kb < num_kb; ++kb, ++it) {
            const int s = static_cast<int>(it % L::kStages);
            if (it >= L::kStages) {
                sm90::mbar_wait(&empty_bar[s], static_cast<uint32_t>((it / L::kStages - 1) & 1));
            }
            float* scales = scale_ring + s * L::kScaleFloats;  // ordered by the stage's barriers (see the 128 tile)
            for (int r = lane; r < kBlockM; r += 32) {
                const int row = t.row0 + r;
                const bool valid = row >= t.valid_begin && row < t.valid_end;
                const float* src =
                    valid ? x_scales + static_cast<int64_t>(kb) * t.rows_e + (row - t.expert_begin) : p.x_scale;
                sm90::cp_async4_zfill(scales + r, src, valid ? 4 : 0);
            }
            if (lane == 0) {
                sm90::cp_async4_zfill(scales + kBlockM, w_scales + kb, 4);
            }
            sm90::cp_async_mbar_arrive(&full_bar[s]);
            __syncwarp();
            if (lane == 0) {
                sm90::mbar_arrive_expect_tx(&full_bar[s], tx_bytes);
                uint8_t* x_stage = smem + s * L::kXTileBytes;
#pragma unroll
                for (int q = 0; q < kBlockM / 64; ++q) {
                    if (((mask >> q) & 1u) == 0) {
                        continue;
                    }
                    uint8_t* box = x_stage + q * 64 * 128;
                    if constexpr (kCluster == 2) {
                        // The loaded boxes alternate between the two CTAs (both compute the same mask).
                        if (static_cast<int>(__popc(mask & ((1u << q) - 1)) % 2) == rank) {
                            prefill_tma_load_multicast(box, tmap_x, &full_bar[s], kb * 128, t.row0 + 64 * q, 0x3);
                        }
                    } else {
                        sm90::tma_load_2d(box, tmap_x, &full_bar[s], kb * 128, t.row0 + 64 * q);
                    }
                }
                sm90::tma_load_2d(smem + L::kWOffset + s * L::kWTileBytes, tmap_w, &full_bar[s], kb * 128, w_row);
            }
        }
    }
}

// One 64-row box of one consumer warpgroup: the 4 k32 MMAs against the stage's weight tile, then the promotion
// into acc[64 kH ...] with the scales of the thread's rows box_row and box_row + 8 (the weight scale at [kBlockM]).
template <int kBlockM, int kH, int kAcc>
__device__ __forceinline__ void boxed_box(float (&acc)[kAcc], float (&part)[64], const uint8_t* x_stage,
                                          const uint8_t* w_tile, const float* scales, int box, int r_in_box) {
    const float w_scale = scales[kBlockM];
    const int r0 = 64 * box + r_in_box;
    const float s0 = scales[r0] * w_scale;
    const float s1 = scales[r0 + 8] * w_scale;
    prefill_mma(part, x_stage + box * 64 * 128, w_tile);
    prefill_promote<kH>(acc, part, s0, s1);
}

// Consumer warpgroup wg over all its items: its boxes h * kConsumers + wg (acc slot h), each only where it holds
// rows of the tile's own range; per item the stores of those boxes' own rows (none where the n block is not own).
template <int kBlockM, int kCluster>
__device__ __forceinline__ void boxed_consume(const Fp8GroupedGemmParams& p, const MoeSchedule& sc, uint8_t* smem,
                                              uint64_t* full_bar, uint64_t* empty_bar, int64_t total_items,
                                              bool expert_major, int rank, int wg, int warp_in_wg, int lane) {
    using L = MoePrefillLayout<kBlockM>;
    constexpr int kConsumers = L::kProducerWarp / 4;   // consumer warpgroups
    constexpr int kSlots = kBlockM / 64 / kConsumers;  // boxes per consumer warpgroup
    static_assert(kSlots * kConsumers * 64 == kBlockM && kSlots * 64 == L::kAcc, "boxes per warpgroup");
    const float* scale_ring = reinterpret_cast<const float*>(smem + L::kScaleOffset);
    const int num_kb = static_cast<int>(p.k / 128);
    const int n_blocks = static_cast<int>(p.n / 128);
    const int r_in_box = warp_in_wg * 16 + lane / 4;
    float acc[L::kAcc];
    float part[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) {
        part[i] = 0.0f;
    }
    int64_t it = 0;
    for (int64_t item = blockIdx.x / kCluster; item < total_items; item += gridDim.x / kCluster) {
        bool own = true;
        const PrefillTile t = decode_boxed_tile<kBlockM, kCluster>(sc, item, expert_major, rank, n_blocks, own);
        const uint32_t mask = boxed_box_mask<kBlockM>(t);
        const bool active0 = ((mask >> wg) & 1u) != 0;
        const bool active1 = kSlots == 2 && ((mask >> (kConsumers + wg)) & 1u) != 0;
#pragma unroll
        for (int i = 0; i < L::kAcc; ++i) {
            acc[i] = 0.0f;
        }
        for (int kb = 0; kb < num_kb; ++kb, ++it) {
            const int s = static_cast<int>(it % L::kStages);
            sm90::mbar_wait(&full_bar[s], static_cast<uint32_t>((it / L::kStages) & 1));
            const uint8_t* x_stage = smem + s * L::kXTileBytes;
            const uint8_t* w_tile = smem + L::kWOffset + s * L::kWTileBytes;
            const float* scales = scale_ring + s * L::kScaleFloats;
            if (active0) {
                boxed_box<kBlockM, 0>(acc, part, x_stage, w_tile, scales, wg, r_in_box);
            }
            if constexpr (kSlots == 2) {
                if (active1) {
                    boxed_box<kBlockM, 1>(acc, part, x_stage, w_tile, scales, kConsumers + wg, r_in_box);
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
        if (!own) {
            continue;
        }
        const int64_t col0 = static_cast<int64_t>(t.n_block) * L::kBlockN;
        if (active0) {
            prefill_store_cols<0>(p, t, acc, col0, 64 * wg + r_in_box, lane % 4);
        }
        if constexpr (kSlots == 2) {
            if (active1) {
                prefill_store_cols<1>(p, t, acc, col0, 64 * (kConsumers + wg) + r_in_box, lane % 4);
            }
        }
    }
}

// grid: one CTA per SM (any count >= 1 is correct; with kCluster 2 an even count in clusters of 2 along x), block
// MoePrefillLayout<kBlockM>::kThreads, dynamic smem its kSmemBytes. tmap_x: x as [rows bound, k] e4m3, box [64, 128];
// tmap_w: w as [num_experts * n, k], box [128, 128]; both 128B swizzle with zero out-of-bounds fill. expert_major: the
// item order (moe_prefill_gemm.cuh; with one m tile per expert both orders coincide).
template <int kBlockM, int kCluster>
__global__ void __launch_bounds__(MoePrefillLayout<kBlockM>::kThreads, 1)
    moe_prefill_gemm_boxed_kernel(const __grid_constant__ CUtensorMap tmap_x,
                                  const __grid_constant__ CUtensorMap tmap_w,
                                  const __grid_constant__ Fp8GroupedGemmParams p, int expert_major) {
    static_assert(kBlockM == 192 || kBlockM == 256, "boxed tiles of 3 or 4 boxes");
    static_assert(kCluster == 1 || kCluster == 2, "clusters of 1 or 2");
    using L = MoePrefillLayout<kBlockM>;
    constexpr int kConsumerWarps = L::kProducerWarp;
    extern __shared__ uint8_t smem_raw[];
    __shared__ uint64_t full_bar[L::kStages];   // TMA bytes + the producer lanes' cp.async scales landed
    __shared__ uint64_t empty_bar[L::kStages];  // all consumer warps (of both CTAs of a cluster) are done
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
            sm90::mbar_init(&empty_bar[s], kConsumerWarps * kCluster);
        }
        sm90::fence_mbarrier_init();
        sm90::prefetch_tensormap(&tmap_x);
        sm90::prefetch_tensormap(&tmap_w);
    }
    build_schedule<kBlockM>(p, s_off, s_unit);  // its __syncthreads also publish the barrier init
    if constexpr (kCluster == 2) {
        cluster_sync();  // the peer's barriers exist before anything reaches them
    }
    const int n_groups = static_cast<int>((p.n / L::kBlockN + kCluster - 1) / kCluster);  // of kCluster n blocks
    const MoeSchedule sc{s_off, s_unit, p.num_experts, n_groups};
    const int64_t total_items = static_cast<int64_t>(s_unit[p.num_experts]) * n_groups;
    if (static_cast<int64_t>(blockIdx.x / kCluster) >= total_items) {
        return;  // no work for this CTA (nor its peer: same items): exit before any TMA
    }
    if (warp >= L::kProducerWarp) {
        // The whole producer warpgroup; its warps past the first only give their registers back.
        setmaxnreg_dec<L::kProducerRegs[kCluster - 1]>();
        if (warp == L::kProducerWarp) {
            boxed_produce<kBlockM, kCluster>(p, &tmap_x, &tmap_w, sc, smem, full_bar, empty_bar, total_items,
                                             expert_major != 0, rank, lane);
        }
        if constexpr (kCluster == 2) {
            cluster_sync();  // see below
        }
    } else {
        setmaxnreg_inc<L::kConsumerRegs[kCluster - 1]>();
        boxed_consume<kBlockM, kCluster>(p, sc, smem, full_bar, empty_bar, total_items, expert_major != 0, rank,
                                         warp / 4, warp % 4, lane);
        if constexpr (kCluster == 2) {
            // Nobody leaves while the peer may still arrive on this CTA's barriers or multicast into its ring.
            cluster_sync();
        }
    }
}

}  // namespace k2::cuda::kernels

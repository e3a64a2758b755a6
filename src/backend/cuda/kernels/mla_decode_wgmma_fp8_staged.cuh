// The staged FP8 MLA decode kernel (session 7, K2_MLA_WG_FP8=staged; measured slower than the default register-fed
// mla_decode_wgmma_fp8_kernel, kept for A/B): the building blocks are mla_decode_wgmma.cuh's. Measurements:
// docs/perf/mla-decode-wgmma.md (Session 7, v7b).
#pragma once

#include "backend/cuda/kernels/mla_decode_wgmma.cuh"

namespace k2::cuda::kernels {

// ---- FP8 cache, session 7: bulk copies into staging slots, converted into one tile ----

// An experiment kept for A/B (K2_MLA_WG_FP8=staged), measured SLOWER than the register kernel (batch 16 x 8192: 71.6
// against 63.4 µs, docs/perf/mla-decode-wgmma.md): the register path keeps one page (36 KB per SM) in flight, so
// memory latency looked like FP8's bound (~3.5 µs per page against a memory floor of 1.2). Here the copy engine loads
// pages into two e4m3 staging slots (where the second bf16 tile was: 2 x 36 KB in flight per SM, as the BF16
// kernel's TMA ring), and the 256 threads convert page i + 1 into the single bf16 tile once page i's P.V is done: the
// conversion became serial and the page time grew by it, so latency was not the bound.
inline constexpr int kMlaWgStageOffset = kMlaWgRingOffset + kMlaWgTileBytes;  // [2][64 tokens][576] e4m3
static_assert(2 * kMlaWgFp8PageBytes <= kMlaWgTileBytes, "two FP8 staging slots fit the second tile");

// Bulk copy (no tensor map) of `bytes` at src into shared memory, completing on bar.
__device__ __forceinline__ void mla_wg_bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     sm90::smem_addr(dst)),
                 "l"(reinterpret_cast<uint64_t>(src)), "r"(bytes), "r"(sm90::smem_addr(bar))
                 : "memory");
}

// Thread 0: page `local` of the split into staging slot local % 2 (one 36,864-byte bulk copy onto full[slot]).
__device__ __forceinline__ void mla_wg_issue_fp8(const MlaDecodeParams& p, const MlaWgWork& w, int local,
                                                 uint8_t* stage, uint64_t* full) {
    const int slot = local & 1;
    const int64_t block = w.block_table[w.page_begin + local];
    sm90::mbar_arrive_expect_tx(&full[slot], kMlaWgFp8PageBytes);
    mla_wg_bulk_load(stage + slot * kMlaWgFp8PageBytes, p.cache_fp8 + block * kMlaWgFp8PageBytes, kMlaWgFp8PageBytes,
                     &full[slot]);
}

// Page `local` (landed in its staging slot) as bf16 into the tile; rows past seq_len become zeros (the cache may hold
// NaN codes there). The caller fences (fence_proxy_async) and synchronizes before the wgmmas read the tile.
__device__ __forceinline__ void mla_wg_fp8_convert(uint8_t* tile, const uint8_t* slot, int valid) {
    uint4 raw[kMlaWgFp8Units];
#pragma unroll
    for (int k = 0; k < kMlaWgFp8Units; ++k) {
        const int unit = static_cast<int>(threadIdx.x) + k * kMlaWgThreads;
        raw[k] = unit / (kMlaEntry / 16) < valid ? *reinterpret_cast<const uint4*>(slot + unit * 16)
                                                 : make_uint4(0u, 0u, 0u, 0u);
    }
    mla_wg_fp8_store<true>(tile, raw);
}

// grid, block, shared memory and kCluster as mla_decode_wgmma_bf16_kernel. Shared memory: Q tile | bf16 page tile |
// 2 staging slots | P | row maxima | 2 mbarriers.
template <bool kCluster>
__global__ void __launch_bounds__(kMlaWgThreads, 1)
    mla_decode_wgmma_fp8_staged_kernel(const __grid_constant__ MlaDecodeParams p, int num_splits, int pages_per_split) {
    extern __shared__ uint8_t smem_raw[];
    uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
    uint8_t* q_tile = smem;                                                // [9 boxes][64 heads][64] bf16, swizzled
    uint8_t* tile = smem + kMlaWgRingOffset;                               // [9 boxes][64 tokens][64] bf16, swizzled
    uint8_t* stage = smem + kMlaWgStageOffset;                             // [2 slots][64 tokens][576] e4m3
    uint8_t* p_tile = smem + kMlaWgPOffset;                                // [64 heads][64 tokens] bf16, swizzled
    float* red = reinterpret_cast<float*>(smem + kMlaWgRedOffset);         // [2 warpgroups][64 rows]
    uint64_t* full = reinterpret_cast<uint64_t*>(smem + kMlaWgBarOffset);  // [2] the slot's page landed
    const int64_t seq = blockIdx.y;
    const int head0 = blockIdx.z * kMlaHeadsPerCta;
    const MlaWgWork w = mla_wg_work(p, seq, blockIdx.x, num_splits, pages_per_split);
    if constexpr (!kCluster) {
        mla_wg_launch_dependents();
    }
    if (threadIdx.x == 0) {
        sm90::mbar_init(&full[0], 1);
        sm90::mbar_init(&full[1], 1);
        sm90::fence_mbarrier_init();
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int i = 0; i < min(2, w.num_local); ++i) {
            mla_wg_issue_fp8(p, w, i, stage, full);
        }
    }
    const MlaWgLane l = mla_wg_lane();
    mla_wg_load_q(q_tile, p.q + (seq * p.num_heads + head0) * kMlaEntry, min(kMlaHeadsPerCta, p.num_heads - head0));
    if (w.num_local > 0) {
        sm90::mbar_wait(&full[0], 0);
        mla_wg_fp8_convert(tile, stage, w.seq_len - w.page_begin * kMlaPageTokens);
    }
    sm90::cp_async_wait<0>();
    sm90::fence_proxy_async();
    mla_wg_sync();
    if (threadIdx.x == 0 && w.num_local > 2) {  // slot 0 is free: every thread converted page 0
        mla_wg_issue_fp8(p, w, 2, stage, full);
    }

    const float scale_log2 = p.softmax_scale * p.kv_scale * 1.4426950408889634f;
    float o[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) {
        o[i] = 0.0f;
    }
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.0f, 0.0f};
    for (int i = 0; i < w.num_local; ++i) {
        const int valid = w.seq_len - (w.page_begin + i) * kMlaPageTokens;
        float s[16];
        mla_wg_scores(s, q_tile, tile + l.wg * 32 * 128);
        mla_wg_softmax(s, o, row_max, row_sum, l, valid, scale_log2, red, p_tile);
        mla_wg_pv_issue(o, p_tile, tile, l.wg);
        sm90::wgmma_wait<0>();
        sm90::fence_registers(o);
        if (i + 1 < w.num_local) {
            const int slot = (i + 1) & 1;
            sm90::mbar_wait(&full[slot], ((i + 1) >> 1) & 1);
            mla_wg_sync();  // both warpgroups' P.V are done with the tile
            mla_wg_fp8_convert(tile, stage + slot * kMlaWgFp8PageBytes, valid - kMlaPageTokens);
            sm90::fence_proxy_async();  // the plain stores -> the next page's wgmma reads
            mla_wg_sync();              // the tile holds page i + 1; the slot is free
            if (threadIdx.x == 0 && i + 3 < w.num_local) {
                mla_wg_issue_fp8(p, w, i + 3, stage, full);
            }
        }
    }
    if constexpr (kCluster) {
        mla_wg_cluster_combine(p, o, row_max, row_sum, l, red, reinterpret_cast<float*>(tile), seq, head0, p.kv_scale);
    } else {
        mla_wg_store_partials(p, o, row_max, row_sum, l, red, seq, head0, blockIdx.x, num_splits);
    }
}

}  // namespace k2::cuda::kernels

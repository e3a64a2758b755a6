// Grouped FP8 GEMM for MoE decode on FP8 GEMM v5's design (kernels/fp8_gemm_wgmma.cuh): the expert WEIGHTS are
// wgmma's M side (64 rows per CTA, one consumer warpgroup), the expert's tokens its N side, two producer warps keep
// an mbarrier ring full (one issues the weight tiles by TMA + 128B swizzle, one the activation rows and scales).
//
// Persistent schedule: grid = what fits at once (2 CTAs per SM). Every CTA reads the device offsets once, counts
// per expert its passes of kMaxN rows (0 for an empty expert) and scans them in shared memory; work item
// (pass unit u, 64-row tile t) = u * tiles + t, dealt round-robin over the CTAs. Empty experts cost nothing but one
// read of their offset (no CTA launch per (expert, tile) as in the old kernel), and the ring streams on across items
// (no refill per tile). A CTA with no item exits before any TMA. CUDA-graph capturable: no host reads of the counts.
//
// Per item the wgmma N is the pass's row count padded to 16, 32 or 64 (<= kMaxN): a 1-row expert costs an m64n16
// MMA whatever the host bound. The activation tile is NOT a TMA: the tensor map would need the allocated row count
// of x, which the params do not carry, and rows past the expert's count must be zeros. The x warp loads
// it with 16-byte cp.async into the 128B-swizzled layout (zero-fill past the pass's rows), waits for them kLag
// stages later (cp.async.wait_group), fences them into the async proxy (fence.proxy.async: wgmma reads shared
// memory through the async proxy, cp.async writes through the generic one) and only then arrives on the stage's
// full barrier, whose other arrival is the weight TMA's expect_tx. Scales ride the same cp.async groups.
//
// Bytes at Kimi-K2 decode (n 4096 k 7168 gate_up, n 7168 k 2048 down; 384 experts, top-8): 16 tokens touch ~110
// experts: 3.2 GB + 1.6 GB of weights; 64 tokens ~288 experts, 256 tokens ~382; activations, scales and outputs
// are < 1% of that. So the kernel is a weight stream: the goal is >= 90% of the copy rate.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "backend/cuda/kernels/fp8_gemm_wgmma.cuh"
#include "backend/cuda/moe_gemm_wgmma_detail.h"
#include "backend/cuda/moe_ops.h"

namespace k2::cuda::kernels {

// Shared-memory plan of one instantiation (tiles 1024-byte aligned, as the 128B swizzle needs). kMaxN: the largest
// wgmma N of the launch (= the pass size); the x tile of a stage has room for kMaxN rows.
template <int kMaxN>
struct MoeWgmmaLayout {
    static constexpr int kRows = detail::kMoeWgmmaRows;  // weight rows per CTA = one consumer warpgroup
    static constexpr int kTmaWarp = 4;                   // weight tiles
    static constexpr int kXWarp = 5;                     // activation rows and scales
    static constexpr int kThreads = 192;
    static constexpr int kWTileBytes = kRows * 128;  // [64, 128 k] e4m3
    static constexpr int kXTileBytes = kMaxN * 128;  // [kMaxN tokens, 128 k] e4m3
    static constexpr int kScaleFloats = kMaxN + 4;   // x scales [kMaxN], the weight scale at [kMaxN], padding
    static constexpr int kStageBytes = kWTileBytes + kXTileBytes + kScaleFloats * 4;
    static constexpr int kBudget = 104 * 1024;  // two CTAs per SM (with the static schedule: ~217 of 228 KB)
    static constexpr int kStages = kBudget / kStageBytes < 12 ? kBudget / kStageBytes : 12;
    static constexpr int kXOffset = kStages * kWTileBytes;
    static constexpr int kScaleOffset = kXOffset + kStages * kXTileBytes;
    static constexpr int kRingBytes = kScaleOffset + kStages * kScaleFloats * 4;
    static constexpr int kSmemBytes = kRingBytes + 1024;  // + alignment slack
    // Stages whose cp.async the x warp has issued but not yet waited for (and so not yet released to the consumers).
    // The weight TMAs do not wait for them (their own warp), but a stage is consumed only once released: two stages
    // of slack for the consumers, the rest of the ring for the x loads' latency. (A first version issued both from
    // one warp with a lag of 3: the TMAs in flight were capped at 4 stages, 62% of the copy rate.)
    static constexpr int kLag = kStages - 2;
    static_assert(kStages >= 5, "ring too shallow");
    static_assert(kScaleFloats * 4 % 16 == 0, "scale rows stay 16-byte aligned");
};

using sm90::cp_async16_zfill;
using sm90::cp_async_commit;
using sm90::cp_async_wait;
using sm90::fence_proxy_async;

// The launch's view of the device offsets, built once per CTA: s_off [num_experts + 1] (the offsets) and s_unit
// [num_experts + 1] (exclusive prefix of each expert's pass count ceil(rows / kMaxN); s_unit[num_experts] = total).
struct MoeSchedule {
    const int* s_off;
    const int* s_unit;
    int num_experts;
    int tiles;  // n / 64
};

// Work item -> expert, weight tile and the pass's rows [row_begin, row_begin + rows) of x / y.
struct MoeItem {
    int expert;
    int tile;
    int64_t expert_begin;  // offsets[expert]
    int rows_e;            // the expert's row count
    int pass_row;          // first row of the pass inside the expert
    int rows;              // rows of this pass (1..kMaxN)
};

// The largest expert e with s_unit[e] <= unit (it has passes or tiles: an empty expert shares the
// next one's prefix); also the prefill kernel's (moe_prefill_gemm.cuh).
__device__ __forceinline__ int expert_of_unit(const MoeSchedule& sc, int unit) {
    int lo = 0;
    int hi = sc.num_experts - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (sc.s_unit[mid] <= unit) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return lo;
}

template <int kMaxN>
__device__ __forceinline__ MoeItem decode_item(const MoeSchedule& sc, int64_t item) {
    const int unit = static_cast<int>(item / sc.tiles);
    MoeItem it;
    it.tile = static_cast<int>(item % sc.tiles);
    const int lo = expert_of_unit(sc, unit);
    it.expert = lo;
    it.expert_begin = sc.s_off[lo];
    it.rows_e = sc.s_off[lo + 1] - sc.s_off[lo];
    it.pass_row = (unit - sc.s_unit[lo]) * kMaxN;
    it.rows = min(kMaxN, it.rows_e - it.pass_row);
    return it;
}

// wgmma N of a pass of `rows` tokens.
__device__ __forceinline__ int tokens_tile(int rows) {
    return rows <= 16 ? 16 : rows <= 32 ? 32 : 64;
}

// Loads the offsets and scans the pass counts (all threads; ends with __syncthreads). Malformed (decreasing)
// offsets count as empty experts.
template <int kMaxN>
__device__ __forceinline__ void build_schedule(const Fp8GroupedGemmParams& p, int* s_off, int* s_unit) {
    const int num_experts = p.num_experts;
    for (int i = static_cast<int>(threadIdx.x); i <= num_experts; i += static_cast<int>(blockDim.x)) {
        s_off[i] = p.offsets[i];
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        const int lane = static_cast<int>(threadIdx.x);
        const int per = (num_experts + 31) / 32;
        const int lo = min(num_experts, lane * per);
        const int hi = min(num_experts, lo + per);
        int sum = 0;
        for (int e = lo; e < hi; ++e) {
            sum += (max(0, s_off[e + 1] - s_off[e]) + kMaxN - 1) / kMaxN;
        }
        int inclusive = sum;
#pragma unroll
        for (int d = 1; d < 32; d <<= 1) {
            const int v = __shfl_up_sync(0xffffffffu, inclusive, d);
            if (lane >= d) {
                inclusive += v;
            }
        }
        int run = inclusive - sum;
        for (int e = lo; e < hi; ++e) {
            s_unit[e] = run;
            run += (max(0, s_off[e + 1] - s_off[e]) + kMaxN - 1) / kMaxN;
        }
        if (lane == 31) {
            s_unit[num_experts] = inclusive;
        }
    }
    __syncthreads();
}

// Releases stage `it`'s cp.async data to the consumers: every lane's copies of the groups up to `it` have landed
// (the caller waited), each lane fences its writes into the async proxy, then lane 0 arrives.
__device__ __forceinline__ void release_stage(uint64_t* full_bar, int stages, int64_t it, int lane) {
    fence_proxy_async();
    __syncwarp();
    if (lane == 0) {
        mbar_arrive(&full_bar[it % stages]);
    }
}

// The weight warp (one thread): per k block of each item, one TMA of the 64 x 128 weight tile into the stage,
// completing on the stage's full barrier (expect_tx), as soon as the consumers have freed the stage.
template <int kMaxN>
__device__ __forceinline__ void produce_weights(const Fp8GroupedGemmParams& p, const CUtensorMap* tmap_w,
                                                const MoeSchedule& sc, uint8_t* smem, uint64_t* full_bar,
                                                uint64_t* empty_bar, int64_t total_items) {
    using L = MoeWgmmaLayout<kMaxN>;
    const int num_kb = static_cast<int>(p.k / 128);
    int64_t it = 0;  // ring iterations so far
    for (int64_t item = blockIdx.x; item < total_items; item += gridDim.x) {
        const MoeItem m = decode_item<kMaxN>(sc, item);
        const int w_row = static_cast<int>(static_cast<int64_t>(m.expert) * p.n + m.tile * L::kRows);
        for (int kb = 0; kb < num_kb; ++kb, ++it) {
            const int s = static_cast<int>(it % L::kStages);
            if (it >= L::kStages) {
                mbar_wait(&empty_bar[s], static_cast<uint32_t>((it / L::kStages - 1) & 1));
            }
            mbar_arrive_expect_tx(&full_bar[s], L::kWTileBytes);
            tma_load_2d(smem + s * L::kWTileBytes, tmap_w, &full_bar[s], kb * 128, w_row);
        }
    }
}

// The x warp: per k block of each item, the pass's x rows (128B-swizzled, zeros past the pass's rows) and the
// scales by cp.async; stage it is released kLag stages later (wait_group, proxy fence, arrive).
template <int kMaxN>
__device__ __forceinline__ void produce_x(const Fp8GroupedGemmParams& p, const MoeSchedule& sc, uint8_t* smem,
                                          uint64_t* full_bar, uint64_t* empty_bar, int64_t total_items, int lane) {
    using L = MoeWgmmaLayout<kMaxN>;
    float* scale_ring = reinterpret_cast<float*>(smem + L::kScaleOffset);  // [kStages, kScaleFloats]
    const int num_kb = static_cast<int>(p.k / 128);
    int64_t it = 0;  // ring iterations so far
    for (int64_t item = blockIdx.x; item < total_items; item += gridDim.x) {
        const MoeItem m = decode_item<kMaxN>(sc, item);
        const int n_tile = tokens_tile(m.rows);
        const uint8_t* x_rows = p.x + (m.expert_begin + m.pass_row) * p.k;         // [rows, k]
        const float* x_scales = p.x_scale + m.expert_begin * num_kb + m.pass_row;  // in the [k / 128, rows_e] block
        const float* w_scales =
            p.w_scale + (static_cast<int64_t>(m.expert) * (p.n / 128) + m.tile * L::kRows / 128) * num_kb;
        for (int kb = 0; kb < num_kb; ++kb, ++it) {
            const int s = static_cast<int>(it % L::kStages);
            if (it >= L::kStages) {
                mbar_wait(&empty_bar[s], static_cast<uint32_t>((it / L::kStages - 1) & 1));
            }
            uint8_t* x_tile = smem + L::kXOffset + s * L::kXTileBytes;
            for (int c = lane; c < n_tile * 8; c += 32) {  // 16-byte chunk c % 8 of row c / 8
                const int r = c >> 3;
                const int chunk = c & 7;
                const bool valid = r < m.rows;
                const uint8_t* src = valid ? x_rows + static_cast<int64_t>(r) * p.k + kb * 128 + chunk * 16 : p.x;
                cp_async16_zfill(x_tile + r * 128 + ((chunk ^ (r & 7)) << 4), src, valid ? 16 : 0);
            }
            float* scales = scale_ring + s * L::kScaleFloats;
            for (int t = lane; t <= n_tile; t += 32) {
                if (t == n_tile) {
                    cp_async4_zfill(scales + kMaxN, w_scales + kb, 4);
                } else {
                    const bool valid = t < m.rows;
                    const float* src = valid ? x_scales + static_cast<int64_t>(kb) * m.rows_e + t : p.x_scale;
                    cp_async4_zfill(scales + t, src, valid ? 4 : 0);
                }
            }
            cp_async_commit();
            cp_async_wait<L::kLag>();  // this lane's groups up to it - kLag have landed
            if (it >= L::kLag) {
                release_stage(full_bar, L::kStages, it - L::kLag, lane);
            }
        }
    }
    cp_async_wait<0>();
    for (int64_t j = it > L::kLag ? it - L::kLag : 0; j < it; ++j) {
        release_stage(full_bar, L::kStages, j, lane);
    }
}

__device__ __forceinline__ void store_bf16_at(uint16_t* ptr, float v) {
    const __nv_bfloat16 b = __float2bfloat16(v);
    *ptr = reinterpret_cast<const uint16_t&>(b);
}

// One item on the consumer warpgroup with wgmma N = kN: all k blocks from the ring (iteration counter `it` runs on
// across items), then the pass's rows of y. Warp w owns weight rows 16 w + lane / 4 (+ 8) of the tile.
template <int kN, int kMaxN>
__device__ __forceinline__ void consume_item(const Fp8GroupedGemmParams& p, const MoeItem& m, uint8_t* smem,
                                             uint64_t* full_bar, uint64_t* empty_bar, int64_t& it, int warp, int lane) {
    using L = MoeWgmmaLayout<kMaxN>;
    const float* scale_ring = reinterpret_cast<const float*>(smem + L::kScaleOffset);
    const int num_kb = static_cast<int>(p.k / 128);
    float acc[kN / 2];
    float part[kN / 2];
#pragma unroll
    for (int i = 0; i < kN / 2; ++i) {
        acc[i] = 0.0f;
        part[i] = 0.0f;
    }
    for (int kb = 0; kb < num_kb; ++kb, ++it) {
        const int s = static_cast<int>(it % L::kStages);
        mbar_wait(&full_bar[s], static_cast<uint32_t>((it / L::kStages) & 1));
        const uint8_t* w_tile = smem + s * L::kWTileBytes;
        const uint8_t* x_tile = smem + L::kXOffset + s * L::kXTileBytes;
        mma_k_block<kN>(part, w_tile, x_tile);
        const float* scales = scale_ring + s * L::kScaleFloats;
        promote_scaled<kN>(acc, part, scales, scales[kMaxN], lane % 4);
        __syncwarp();
        if (lane == 0) {
            mbar_arrive(&empty_bar[s]);  // this warp's MMAs and scale reads of stage s are done
        }
    }
    const int64_t row = static_cast<int64_t>(m.tile) * L::kRows + warp * 16 + lane / 4;  // weight row = y column
    uint16_t* y = p.y + (m.expert_begin + m.pass_row) * p.n + row;                       // [rows, n] of the pass
#pragma unroll
    for (int j = 0; j < kN / 8; ++j) {
        const int token = 8 * j + 2 * (lane % 4);
        if (token < m.rows) {
            store_bf16_at(y + token * p.n, acc[4 * j + 0]);
            store_bf16_at(y + token * p.n + 8, acc[4 * j + 2]);
        }
        if (token + 1 < m.rows) {
            store_bf16_at(y + (token + 1) * p.n, acc[4 * j + 1]);
            store_bf16_at(y + (token + 1) * p.n + 8, acc[4 * j + 3]);
        }
    }
}

// grid: the CTAs that fit at once (any count works), block kThreads (4 consumer warps, the weight warp, the x warp).
// tmap_w: w as [num_experts * n, k] e4m3, box [64, 128], 128B swizzle.
template <int kMaxN>
__global__ void __launch_bounds__(MoeWgmmaLayout<kMaxN>::kThreads, 2)
    moe_gemm_wgmma_kernel(const __grid_constant__ CUtensorMap tmap_w, const __grid_constant__ Fp8GroupedGemmParams p) {
    using L = MoeWgmmaLayout<kMaxN>;
    extern __shared__ uint8_t smem_raw[];
    __shared__ uint64_t full_bar[L::kStages];   // weight TMA bytes + the x warp's release of the cp.async data
    __shared__ uint64_t empty_bar[L::kStages];  // every consumer warp is done with the stage
    __shared__ int s_off[detail::kMoeWgmmaMaxExperts + 1];
    __shared__ int s_unit[detail::kMoeWgmmaMaxExperts + 1];
    uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int lane = static_cast<int>(threadIdx.x) % 32;

    if (threadIdx.x == 0) {
#pragma unroll
        for (int s = 0; s < L::kStages; ++s) {
            mbar_init(&full_bar[s], 2);
            mbar_init(&empty_bar[s], 4);
        }
        sm90::fence_mbarrier_init();
        sm90::prefetch_tensormap(&tmap_w);
    }
    build_schedule<kMaxN>(p, s_off, s_unit);  // its __syncthreads also publish the barrier init
    const MoeSchedule sc{s_off, s_unit, p.num_experts, static_cast<int>(p.n / L::kRows)};
    const int64_t total_items = static_cast<int64_t>(s_unit[p.num_experts]) * sc.tiles;
    if (static_cast<int64_t>(blockIdx.x) >= total_items) {
        return;  // no work for this CTA (e.g. no rows at all): exit before any TMA
    }
    if (warp == L::kTmaWarp) {
        if (lane == 0) {
            produce_weights<kMaxN>(p, &tmap_w, sc, smem, full_bar, empty_bar, total_items);
        }
        return;
    }
    if (warp == L::kXWarp) {
        produce_x<kMaxN>(p, sc, smem, full_bar, empty_bar, total_items, lane);
        return;
    }
    int64_t it = 0;
    for (int64_t item = blockIdx.x; item < total_items; item += gridDim.x) {
        const MoeItem m = decode_item<kMaxN>(sc, item);
        if constexpr (kMaxN >= 64) {
            if (m.rows > 32) {
                consume_item<64, kMaxN>(p, m, smem, full_bar, empty_bar, it, warp, lane);
                continue;
            }
        }
        if constexpr (kMaxN >= 32) {
            if (m.rows > 16) {
                consume_item<32, kMaxN>(p, m, smem, full_bar, empty_bar, it, warp, lane);
                continue;
            }
        }
        consume_item<16, kMaxN>(p, m, smem, full_bar, empty_bar, it, warp, lane);
    }
}

}  // namespace k2::cuda::kernels

// Kernels of moe_ops.h's data movement: permute (stable counting sort by expert), gather (quantized rows and
// expert-blocked scales into expert order) and combine (weighted sum back per token). The grouped GEMM is in
// fp8_grouped_gemm.cuh.
#pragma once

#include <cuda_bf16.h>

#include "backend/cuda/moe_ops.h"
#include "backend/cuda/moe_ops_detail.h"

namespace k2::cuda::kernels {

inline constexpr int kPermuteWarps = 16;
inline constexpr int kPermuteThreads = kPermuteWarps * 32;
static_assert(kPermuteThreads >= detail::kMoeMaxExperts, "phase 2 gives every expert its own thread");

inline constexpr int kGatherThreads = 128;
inline constexpr int kGatherVecs = 4;  // 16-byte loads per thread in flight: Kimi-K2's 7168-byte rows in one step
// Combine at decode (<= kCombineFewTokens tokens): 128 threads x 8 columns, Kimi-K2's 7168 columns as 7 full blocks
// per token (256 left the 4th block half idle and gave a 16-token decode only 64 blocks), each thread's top_k loads
// in flight together. Larger batches keep the serial kernel (256 threads, one pair at a time), which measured faster
// there (6.3 vs 7.6 µs at 256 tokens, 281 vs 317 µs at 8192). Both sum in the same order: the same bits.
inline constexpr int kCombineThreads = 128;
inline constexpr int kCombineSerialThreads = 256;
inline constexpr int kCombineVec = 8;    // bf16 per thread: one 16-byte load per expert row
inline constexpr int kCombineBatch = 8;  // pairs whose loads are in flight together (Kimi-K2's top_k)
inline constexpr int64_t kCombineFewTokens = 64;

// Steps of 32 pairs whose ids one warp loads together: hides the global load latency of the serial walk.
inline constexpr int kPermuteBatch = 8;

// Local expert of pair i of this warp's segment, or -1 past the segment's end or for an id outside this rank's
// [expert_begin, + num_experts) (such a pair gets no row: pair_row -1, offsets[num_experts] counts valid pairs).
__device__ __forceinline__ int permute_expert(const MoePermuteParams& p, int i, int seg_end) {
    if (i >= seg_end) {
        return -1;
    }
    const int e = p.topk_ids[i] - p.expert_begin;
    return e >= 0 && e < p.num_experts ? e : -1;
}

// The local experts of the 32 * kPermuteBatch pairs from `batch` on (lane's pair i = batch + s * 32 + lane).
__device__ __forceinline__ void permute_load_batch(const MoePermuteParams& p, int batch, int seg_end, int lane,
                                                   int (&experts)[kPermuteBatch]) {
#pragma unroll
    for (int s = 0; s < kPermuteBatch; ++s) {
        experts[s] = permute_expert(p, batch + s * 32 + lane, seg_end);
    }
}

// One batch of this warp's walk, 32 pairs per step. cursor: this warp's row [num_experts] of per-expert counts.
// kWrite false: counts only. kWrite true: pair i of expert e gets row base[e] + cursor[e] + (its rank among the
// step's lanes of e, by lane), then the cursor moves past the step. One leader per expert present in a step
// updates the cursor (distinct experts: no write conflict).
template <bool kWrite>
__device__ __forceinline__ void permute_batch(const MoePermuteParams& p, int batch, int seg_end,
                                              const int (&experts)[kPermuteBatch], int* cursor, const int* base,
                                              int lane) {
    const unsigned lanes_before = (1u << lane) - 1u;
#pragma unroll
    for (int s = 0; s < kPermuteBatch; ++s) {
        const int i = batch + s * 32 + lane;
        const int e = experts[s];
        const unsigned same = __match_any_sync(0xffffffffu, e);
        if constexpr (kWrite) {
            if (e >= 0) {
                const int row = base[e] + cursor[e] + __popc(same & lanes_before);
                p.row_token[row] = i / p.top_k;
                p.pair_row[i] = row;
            } else if (i < seg_end) {
                p.pair_row[i] = -1;
            }
            __syncwarp();  // every lane has read its cursor before the leader moves it
        }
        if (e >= 0 && lane == __ffs(same) - 1) {
            cursor[e] += __popc(same);
        }
        __syncwarp();
    }
}

// Walks this warp's segment [seg_begin, seg_end) in order, a batch of 32 * kPermuteBatch pairs at a time (their
// ids loaded together: hides the global load latency of the serial walk).
template <bool kWrite>
__device__ __forceinline__ void permute_walk(const MoePermuteParams& p, int seg_begin, int seg_end, int* cursor,
                                             const int* base, int lane) {
    for (int batch = seg_begin; batch < seg_end; batch += 32 * kPermuteBatch) {
        int experts[kPermuteBatch];
        permute_load_batch(p, batch, seg_end, lane, experts);
        permute_batch<kWrite>(p, batch, seg_end, experts, cursor, base, lane);
    }
}

// grid: 1, block: kPermuteThreads. Warp w owns the contiguous pair segment w; the segments are in pair order, so
// expert e's rows are: offsets[e], then every earlier warp's count of e, then the rank inside this warp's walk.
// Stable and deterministic: no atomics anywhere. Shared memory: 16 x 512 x 4 = 32 KiB of per-(warp, expert) counts.
__global__ void __launch_bounds__(kPermuteThreads) moe_permute_kernel(const __grid_constant__ MoePermuteParams p) {
    __shared__ int s_count[kPermuteWarps][detail::kMoeMaxExperts];  // phase 1: counts; phase 2 on: warp cursors
    __shared__ int s_offset[detail::kMoeMaxExperts];
    __shared__ int s_warp_total[kPermuteWarps];
    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int num_pairs = static_cast<int>(p.num_tokens * p.top_k);
    const int seg = (num_pairs + kPermuteWarps - 1) / kPermuteWarps;
    const int seg_begin = min(num_pairs, warp * seg);
    const int seg_end = min(num_pairs, seg_begin + seg);

    for (int i = static_cast<int>(threadIdx.x); i < kPermuteWarps * detail::kMoeMaxExperts; i += kPermuteThreads) {
        (&s_count[0][0])[i] = 0;
    }
    __syncthreads();
    // A segment of one batch (up to 16 * 256 = 4096 pairs: every decode batch) keeps its ids in registers from
    // phase 1 to phase 3 instead of loading them twice. The branch is uniform: seg is the same for every warp.
    const bool one_batch = seg <= 32 * kPermuteBatch;
    int experts[kPermuteBatch];
    if (one_batch) {
        permute_load_batch(p, seg_begin, seg_end, lane, experts);
        permute_batch<false>(p, seg_begin, seg_end, experts, s_count[warp], nullptr, lane);  // phase 1: counts
    } else {
        permute_walk<false>(p, seg_begin, seg_end, s_count[warp], nullptr, lane);  // phase 1: per-warp counts
    }
    __syncthreads();

    // Phase 2: thread e turns its column of counts into per-warp cursors, then a block-wide exclusive scan of the
    // expert totals gives the offsets.
    const int e = static_cast<int>(threadIdx.x);
    int total = 0;
    if (e < p.num_experts) {
        for (int w = 0; w < kPermuteWarps; ++w) {
            const int c = s_count[w][e];
            s_count[w][e] = total;
            total += c;
        }
    }
    int inclusive = total;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, inclusive, d);
        if (lane >= d) {
            inclusive += v;
        }
    }
    if (lane == 31) {
        s_warp_total[warp] = inclusive;
    }
    __syncthreads();
    int warp_base = 0;
    for (int w = 0; w < warp; ++w) {
        warp_base += s_warp_total[w];
    }
    const int exclusive = warp_base + inclusive - total;
    if (e < p.num_experts) {
        s_offset[e] = exclusive;
        p.offsets[e] = exclusive;
    }
    if (e == p.num_experts - 1) {
        p.offsets[p.num_experts] = exclusive + total;
    }
    __syncthreads();
    if (one_batch) {
        permute_batch<true>(p, seg_begin, seg_end, experts, s_count[warp], s_offset, lane);  // phase 3: rows
    } else {
        permute_walk<true>(p, seg_begin, seg_end, s_count[warp], s_offset, lane);  // phase 3: rows
    }
}

// The expert of permuted row `row` (< offsets[num_experts]): the largest e with offsets[e] <= row (empty experts
// before it share its offset). s_offsets: the block's shared copy of offsets [num_experts + 1], so the ~9 steps of
// the search are shared-memory reads instead of dependent global loads.
__device__ __forceinline__ int expert_of_row(const int* s_offsets, int num_experts, int64_t row) {
    int lo = 0;
    int hi = num_experts - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (s_offsets[mid] <= row) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return lo;
}

// Copies offsets [num_experts + 1] (<= kMoeMaxExperts + 1) into shared memory; ends with __syncthreads().
__device__ __forceinline__ void load_offsets(int* s_offsets, const int32_t* offsets, int num_experts) {
    for (int e = static_cast<int>(threadIdx.x); e <= num_experts; e += static_cast<int>(blockDim.x)) {
        s_offsets[e] = offsets[e];
    }
    __syncthreads();
}

// grid: [P], block: kGatherThreads. Block r copies permuted row r (16 bytes per thread and step, kGatherVecs steps'
// loads in flight together) and scatters its k / 128 scales into its expert's [k / 128, n_e] block. Rows past
// offsets[num_experts] (pairs with invalid ids) have no source and are left alone.
__global__ void __launch_bounds__(kGatherThreads) moe_gather_kernel(const __grid_constant__ MoeGatherParams p) {
    __shared__ int s_offsets[detail::kMoeMaxExperts + 1];
    const int row = static_cast<int>(blockIdx.x);
    const int64_t token = p.row_token[row];  // issued before the offsets arrive (rows past the end hold -1 or junk)
    load_offsets(s_offsets, p.offsets, p.num_experts);
    if (row >= s_offsets[p.num_experts]) {
        return;
    }
    const int e = expert_of_row(s_offsets, p.num_experts, row);
    const int64_t begin = s_offsets[e];
    const int64_t rows_e = s_offsets[e + 1] - begin;
    const uint4* src = reinterpret_cast<const uint4*>(p.x + token * p.k);           // [k / 16]
    uint4* dst = reinterpret_cast<uint4*>(p.out + static_cast<int64_t>(row) * p.k);  // [k / 16]
    const int64_t num_vecs = p.k / 16;
    for (int64_t base = threadIdx.x; base < num_vecs; base += kGatherThreads * kGatherVecs) {
        uint4 v[kGatherVecs];
#pragma unroll
        for (int j = 0; j < kGatherVecs; ++j) {
            const int64_t i = base + j * kGatherThreads;
            if (i < num_vecs) {
                v[j] = src[i];
            }
        }
#pragma unroll
        for (int j = 0; j < kGatherVecs; ++j) {
            const int64_t i = base + j * kGatherThreads;
            if (i < num_vecs) {
                dst[i] = v[j];
            }
        }
    }
    const int64_t num_kb = p.k / 128;
    float* scale = p.out_scale + begin * num_kb + (row - begin);
    for (int64_t kb = threadIdx.x; kb < num_kb; kb += kGatherThreads) {
        scale[kb * rows_e] = p.x_scale[kb * p.x_scale_stride + token];
    }
}

__device__ __forceinline__ uint4 round_bf16x8(const float (&acc)[kCombineVec]) {
    uint32_t words[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const __nv_bfloat16 lo = __float2bfloat16(acc[2 * i]);
        const __nv_bfloat16 hi = __float2bfloat16(acc[2 * i + 1]);
        words[i] = static_cast<uint32_t>(reinterpret_cast<const uint16_t&>(lo)) |
                   (static_cast<uint32_t>(reinterpret_cast<const uint16_t&>(hi)) << 16);
    }
    return make_uint4(words[0], words[1], words[2], words[3]);
}

__device__ __forceinline__ void add_bf16x8(float (&acc)[kCombineVec], const uint4& v, float weight) {
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        acc[2 * i] += weight * __uint_as_float(words[i] << 16);
        acc[2 * i + 1] += weight * __uint_as_float(words[i] & 0xFFFF0000u);
    }
}

// grid: [num_tokens, ceil(hidden / (kCombineVec * kCombineThreads))], block: kCombineThreads; each thread owns 8
// consecutive columns of one token. Sum in k order, shared expert last, one bf16 rounding. The pairs go in batches
// of kCombineBatch: their rows and weights are loaded first, then all their 16-byte vectors (and the shared row's),
// so a thread waits on two memory round trips per batch instead of two per pair; the adds keep the k order.
__global__ void __launch_bounds__(kCombineThreads) moe_combine_kernel(const __grid_constant__ MoeCombineParams p) {
    const int64_t token = blockIdx.x;
    const int64_t col = (static_cast<int64_t>(blockIdx.y) * kCombineThreads + threadIdx.x) * kCombineVec;
    if (col >= p.hidden) {
        return;
    }
    const int32_t* pair_row = p.pair_row + token * p.top_k;    // [top_k]
    const float* topk_weight = p.topk_weights + token * p.top_k;  // [top_k]
    uint4 shared_vec = make_uint4(0u, 0u, 0u, 0u);
    if (p.shared != nullptr) {
        shared_vec = *reinterpret_cast<const uint4*>(p.shared + token * p.hidden + col);
    }
    float acc[kCombineVec] = {};
    for (int j0 = 0; j0 < p.top_k; j0 += kCombineBatch) {
        int64_t rows[kCombineBatch];
        float weights[kCombineBatch];
#pragma unroll
        for (int j = 0; j < kCombineBatch; ++j) {
            rows[j] = -1;  // past top_k: contributes nothing, like a pair without a row
            weights[j] = 0.0f;
            if (j0 + j < p.top_k) {
                rows[j] = pair_row[j0 + j];
                weights[j] = topk_weight[j0 + j];
            }
        }
        uint4 vecs[kCombineBatch];
#pragma unroll
        for (int j = 0; j < kCombineBatch; ++j) {
            if (rows[j] >= 0) {  // a pair the permute gave no row (invalid expert id) is skipped
                vecs[j] = *reinterpret_cast<const uint4*>(p.y + rows[j] * p.hidden + col);
            }
        }
#pragma unroll
        for (int j = 0; j < kCombineBatch; ++j) {
            if (rows[j] >= 0) {
                add_bf16x8(acc, vecs[j], weights[j]);
            }
        }
    }
    if (p.shared != nullptr) {
        add_bf16x8(acc, shared_vec, 1.0f);
    }
    *reinterpret_cast<uint4*>(p.out + token * p.hidden + col) = round_bf16x8(acc);
}

// grid: [num_tokens, ceil(hidden / (kCombineVec * kCombineSerialThreads))], block: kCombineSerialThreads. The
// large-batch form: one pair at a time, the same sum as moe_combine_kernel.
__global__ void __launch_bounds__(kCombineSerialThreads)
    moe_combine_serial_kernel(const __grid_constant__ MoeCombineParams p) {
    const int64_t token = blockIdx.x;
    const int64_t col = (static_cast<int64_t>(blockIdx.y) * kCombineSerialThreads + threadIdx.x) * kCombineVec;
    if (col >= p.hidden) {
        return;
    }
    float acc[kCombineVec] = {};
    for (int j = 0; j < p.top_k; ++j) {
        const int64_t row = p.pair_row[token * p.top_k + j];
        if (row < 0) {
            continue;  // a pair the permute gave no row (invalid expert id)
        }
        const float weight = p.topk_weights[token * p.top_k + j];
        add_bf16x8(acc, *reinterpret_cast<const uint4*>(p.y + row * p.hidden + col), weight);
    }
    if (p.shared != nullptr) {
        add_bf16x8(acc, *reinterpret_cast<const uint4*>(p.shared + token * p.hidden + col), 1.0f);
    }
    *reinterpret_cast<uint4*>(p.out + token * p.hidden + col) = round_bf16x8(acc);
}

inline constexpr int kEpDropThreads = 256;

// One thread per (row, k) pair of the gathered rows: expert id -1 unless the row is a real token of its replica.
__global__ void __launch_bounds__(kEpDropThreads)
    moe_ep_drop_padding_kernel(const __grid_constant__ MoeEpDropParams p) {
    const int64_t pair = static_cast<int64_t>(blockIdx.x) * kEpDropThreads + threadIdx.x;
    if (pair >= int64_t{p.dp} * p.tp * p.slice_rows * p.top_k) {
        return;
    }
    const int64_t row = pair / p.top_k;
    const auto rank = static_cast<int>(row / p.slice_rows);
    const int64_t in_slice = row % p.slice_rows;
    const int d = rank / p.tp;
    const int r = rank % p.tp;
    const int64_t real = p.counts[d];
    const int64_t rows = p.counts[p.dp + d];
    const int64_t begin = rows * r / p.tp;
    const int64_t sent = rows * (r + 1) / p.tp - begin;
    const int64_t valid = max(int64_t{0}, min(real - begin, sent));
    if (in_slice >= valid) {
        p.topk_ids[pair] = -1;
    }
}

}  // namespace k2::cuda::kernels

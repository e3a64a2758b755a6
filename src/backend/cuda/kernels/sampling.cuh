// Kernel of sampling.h: one CTA of 1024 threads per row. Pass 1 (coalesced): the largest logit and its first index
// (greedy rows end here). Temperature rows: each thread weighs a contiguous chunk of the vocabulary (draw_weight, the
// host sampler's bits) and sums it in float; a block scan of the chunk sums in double gives each chunk's start on the
// CDF; the thread whose chunk holds target = uniform * total walks it token by token (and past it, should its rounded
// sum fall short, as the host walk does). Filtered rows without an active filter are drawn here as temperature rows
// (as the host sampler does); the others are kernels/sampling_filter.cuh's.
#pragma once

#include <climits>
#include <cstdint>

#include "backend/cuda/kernels/sampling_filter.cuh"
#include "backend/cuda/sampling.h"
#include "core/fast_exp.h"

namespace k2::cuda::kernels {

inline constexpr int kSampleThreads = 1024;
inline constexpr int kSampleWarps = kSampleThreads / 32;

struct ArgMax {
    float value;
    int index;
};

// The larger value, the smaller index among equal values.
__device__ __forceinline__ ArgMax better_of(ArgMax a, ArgMax b) {
    return b.value > a.value || (b.value == a.value && b.index < a.index) ? b : a;
}

// The row's largest logit and its first index, known to every thread. NaN counts as -inf (the host's max skips it).
__device__ ArgMax row_argmax(const float* x, int vocab, ArgMax* warp_best) {
    const float neg_inf = __int_as_float(static_cast<int>(0xff800000u));
    ArgMax best{neg_inf, INT_MAX};
    for (int i = static_cast<int>(threadIdx.x); i < vocab; i += kSampleThreads) {
        float v = x[i];
        v = v == v ? v : neg_inf;
        if (v > best.value || best.index == INT_MAX) {  // indices rise within a thread: the first one stays
            best = ArgMax{v, i};
        }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const ArgMax other{__shfl_xor_sync(0xffffffffu, best.value, offset),
                           __shfl_xor_sync(0xffffffffu, best.index, offset)};
        best = better_of(best, other);
    }
    const int warp = static_cast<int>(threadIdx.x) / 32;
    if (threadIdx.x % 32 == 0) {
        warp_best[warp] = best;
    }
    __syncthreads();
    ArgMax total = warp_best[0];
    for (int w = 1; w < kSampleWarps; ++w) {
        total = better_of(total, warp_best[w]);
    }
    return total;
}

// Exclusive prefix of `value` over the block's threads (in thread order) and the block total.
__device__ double block_exclusive_scan(double value, double* warp_sums, double& total) {
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int warp = static_cast<int>(threadIdx.x) / 32;
    double inclusive = value;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
        const double up = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) {
            inclusive += up;
        }
    }
    if (lane == 31) {
        warp_sums[warp] = inclusive;
    }
    __syncthreads();
    double warp_prefix = 0.0;
    total = 0.0;
    for (int w = 0; w < kSampleWarps; ++w) {  // 32 shared reads, in one fixed order for every thread
        if (w < warp) {
            warp_prefix += warp_sums[w];
        }
        total += warp_sums[w];
    }
    return warp_prefix + inclusive - value;
}

// grid: [rows], block: kSampleThreads.
__global__ void __launch_bounds__(kSampleThreads) sample_rows_kernel(const __grid_constant__ SampleRowsParams p) {
    __shared__ ArgMax warp_best[kSampleWarps];
    __shared__ double warp_sums[kSampleWarps];
    __shared__ int walker;
    const int64_t row = blockIdx.x;
    const auto mode = static_cast<SampleMode>(p.mode[row]);
    const bool filtered = mode == SampleMode::Filtered && p.filter != nullptr;
    if (mode != SampleMode::Greedy && mode != SampleMode::Temperature && !filtered) {
        return;  // the host samples this row
    }
    const int vocab = static_cast<int>(p.vocab);
    if (filtered && filter_active(p.filter[row], vocab)) {
        return;  // sample_filtered_rows_kernel's row
    }
    const float* x = p.logits + row * p.stride;  // [vocab]
    const ArgMax best = row_argmax(x, vocab, warp_best);
    if (mode == SampleMode::Greedy) {
        if (threadIdx.x == 0) {
            p.tokens[row] = best.index == INT_MAX ? 0 : best.index;
        }
        return;
    }
    const float inv_t = p.inv_temperature[row];
    const int chunk = (vocab + kSampleThreads - 1) / kSampleThreads;
    const int begin = static_cast<int>(threadIdx.x) * chunk;
    const int end = min(vocab, begin + chunk);
    float sum = 0.0f;
    for (int i = begin; i < end; ++i) {
        sum += draw_weight(x[i], best.value, inv_t);
    }
    if (threadIdx.x == 0) {
        walker = INT_MAX;
    }
    double total = 0.0;
    const double start = block_exclusive_scan(static_cast<double>(sum), warp_sums, total);
    const double target = p.uniform[row] * total;
    if (begin < vocab && start + static_cast<double>(sum) > target) {
        atomicMin(&walker, static_cast<int>(threadIdx.x));
    }
    __syncthreads();
    const int last_chunk = (vocab - 1) / chunk;
    if (static_cast<int>(threadIdx.x) != (walker == INT_MAX ? last_chunk : walker)) {
        return;
    }
    double cumulative = start;
    int last_nonzero = 0;
    for (int i = begin; i < vocab; ++i) {
        const float w = draw_weight(x[i], best.value, inv_t);
        if (w <= 0.0f) {
            continue;
        }
        cumulative += w;
        last_nonzero = i;
        if (target < cumulative) {
            break;
        }
    }
    p.tokens[row] = last_nonzero;
}

}  // namespace k2::cuda::kernels

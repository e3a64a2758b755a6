// The scale relayout kernel (validation in moe_layout.cpp). Bytes are tiny (P * k / 128 floats); one thread per
// (group, row), the row's expert found by binary search over the offsets (copied to shared memory per block).
#include "backend/cuda/moe_layout.h"

namespace k2::cuda {

namespace {

constexpr int kLayoutThreads = 256;
constexpr int kLayoutMaxExperts = 512;  // moe_layout.cpp checks num_experts against it

// grid: ceil(P * groups / kLayoutThreads), block: kLayoutThreads; thread i moves scale (g, r) = (i / P, i % P).
// The block first copies the offsets into shared memory, so the ~9 steps of the row's binary search are shared
// reads instead of dependent global loads (the search was most of this kernel's 3.3 µs at a 16-token decode).
__global__ void __launch_bounds__(kLayoutThreads) moe_scales_to_expert_blocked_kernel(const MoeScaleLayoutParams p) {
    __shared__ int s_offsets[kLayoutMaxExperts + 1];
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const bool in_range = i < p.num_rows * p.num_groups;
    const int64_t g = in_range ? i / p.num_rows : 0;
    const int64_t r = in_range ? i % p.num_rows : 0;
    const float value = in_range ? p.scale[g * p.num_rows + r] : 0.0f;  // issued before the offsets arrive
    for (int e = static_cast<int>(threadIdx.x); e <= p.num_experts; e += kLayoutThreads) {
        s_offsets[e] = p.offsets[e];
    }
    __syncthreads();
    if (!in_range || r >= s_offsets[p.num_experts]) {
        return;
    }
    int lo = 0;  // last expert whose offset is <= r
    int hi = p.num_experts - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (s_offsets[mid] <= r) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    const int64_t begin = s_offsets[lo];
    const int64_t rows = s_offsets[lo + 1] - begin;
    p.out[begin * p.num_groups + g * rows + (r - begin)] = value;
}

}  // namespace

namespace detail {

cudaError_t launch_moe_scales_to_expert_blocked_kernel(const MoeScaleLayoutParams& p, cudaStream_t stream) {
    const int64_t count = p.num_rows * p.num_groups;
    moe_scales_to_expert_blocked_kernel<<<static_cast<unsigned>((count + kLayoutThreads - 1) / kLayoutThreads),
                                          kLayoutThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace detail

}  // namespace k2::cuda

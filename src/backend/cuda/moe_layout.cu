// The scale relayout kernel (validation in moe_layout.cpp). Bytes are tiny (P * k / 128 floats); one thread per
// (group, row), the row's expert found by binary search over the device offsets.
#include "backend/cuda/moe_layout.h"

namespace k2::cuda {

namespace {

__global__ void moe_scales_to_expert_blocked_kernel(const MoeScaleLayoutParams p) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= p.num_rows * p.num_groups) {
        return;
    }
    const int64_t g = i / p.num_rows;
    const int64_t r = i % p.num_rows;
    if (r >= p.offsets[p.num_experts]) {
        return;
    }
    int lo = 0;  // last expert whose offset is <= r
    int hi = p.num_experts - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (p.offsets[mid] <= r) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    const int64_t begin = p.offsets[lo];
    const int64_t rows = p.offsets[lo + 1] - begin;
    p.out[begin * p.num_groups + g * rows + (r - begin)] = p.scale[g * p.num_rows + r];
}

}  // namespace

namespace detail {

cudaError_t launch_moe_scales_to_expert_blocked_kernel(const MoeScaleLayoutParams& p, cudaStream_t stream) {
    const int64_t count = p.num_rows * p.num_groups;
    moe_scales_to_expert_blocked_kernel<<<static_cast<unsigned>((count + 255) / 256), 256, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace detail

}  // namespace k2::cuda

// Raw launch of the SM copy kernel (validation in device_copy.cpp).
#include "backend/cuda/launch_detail.h"

namespace k2::cuda::detail {
namespace {

// Grid-stride, 4 independent 16-byte loads in flight per thread.
__global__ void __launch_bounds__(512) device_copy_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst,
                                                          int64_t num_vecs) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    for (; i + 3 * stride < num_vecs; i += 4 * stride) {
        const uint4 a = src[i];
        const uint4 b = src[i + stride];
        const uint4 c = src[i + 2 * stride];
        const uint4 d = src[i + 3 * stride];
        dst[i] = a;
        dst[i + stride] = b;
        dst[i + 2 * stride] = c;
        dst[i + 3 * stride] = d;
    }
    for (; i < num_vecs; i += stride) {
        dst[i] = src[i];
    }
}

}  // namespace

cudaError_t launch_device_copy_kernel(const DeviceCopyParams& p, int num_sms, cudaStream_t stream) {
    device_copy_kernel<<<num_sms * 4, 512, 0, stream>>>(static_cast<const uint4*>(p.src), static_cast<uint4*>(p.dst),
                                                        p.num_bytes / 16);
    return cudaGetLastError();
}

}  // namespace k2::cuda::detail

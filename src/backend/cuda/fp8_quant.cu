// Raw launches of the fp8_quant kernels (validation is in fp8_quant.cpp).
#include "backend/cuda/kernels/fp8_quant.cuh"
#include "backend/cuda/launch_detail.h"

namespace k2::cuda::detail {

cudaError_t launch_rms_norm_quant_kernel(const RmsNormQuantParams& p, cudaStream_t stream) {
    kernels::rms_norm_quant_kernel<<<static_cast<unsigned>(p.num_tokens), kernels::kQuantThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

cudaError_t launch_silu_mul_quant_kernel(const SiluMulQuantParams& p, cudaStream_t stream) {
    const int64_t num_vecs = p.num_tokens * p.inter / 8;
    constexpr int64_t kVecsPerBlock = 256 * kernels::kSiluVecs;
    kernels::silu_mul_quant_kernel<<<static_cast<unsigned>((num_vecs + kVecsPerBlock - 1) / kVecsPerBlock), 256, 0,
                                     stream>>>(p);
    return cudaGetLastError();
}

cudaError_t launch_fp8_quant_kernel(const Fp8QuantParams& p, cudaStream_t stream) {
    const int64_t num_vecs = p.num_tokens * p.hidden / 8;
    kernels::fp8_quant_kernel<<<static_cast<unsigned>((num_vecs + 255) / 256), 256, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace k2::cuda::detail

// Raw launches of the fp8_quant kernels (validation is in fp8_quant.cpp).
#include "backend/cuda/kernels/fp8_quant.cuh"
#include "backend/cuda/kernels/row_norm.cuh"
#include "backend/cuda/launch_detail.h"

namespace k2::cuda::detail {

static_assert(kernels::kNormMaxHidden == 65536, "the hidden bound that the launchers check");

cudaError_t launch_rms_norm_quant_kernel(const RmsNormQuantParams& p, cudaStream_t stream) {
    kernels::RowNormArgs a;
    a.x = p.x;
    a.residual = p.residual;
    a.weight = p.weight;
    a.out_bf16 = p.out_bf16;
    a.out_q = p.out;
    a.out_scale = p.out_scale;
    a.hidden = p.hidden;
    a.x_stride = p.x_stride;
    a.out_bf16_stride = p.out_bf16_stride;
    a.out_q_stride = p.out_stride;
    a.scale_stride = p.scale_stride;
    a.eps = p.eps;
    a.vec8 = true;
    return kernels::launch_row_norm<true>(a, p.num_tokens, stream);
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

// Raw launch of the MoE router kernel (validation in moe_router.cpp).
#include "backend/cuda/kernels/moe_router.cuh"
#include "backend/cuda/launch_detail.h"

namespace k2::cuda::detail {

cudaError_t launch_moe_router_kernel(const MoeRouterParams& p, cudaStream_t stream) {
    const auto blocks = static_cast<unsigned>((p.num_tokens + kernels::kRouterWarps - 1) / kernels::kRouterWarps);
    kernels::moe_router_kernel<<<blocks, 32 * kernels::kRouterWarps, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace k2::cuda::detail

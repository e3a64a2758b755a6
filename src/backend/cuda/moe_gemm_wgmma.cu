// Raw launches of the wgmma grouped MoE decode GEMM (kernels/moe_gemm_wgmma.cuh); validation and the tensor map
// are in moe_gemm_wgmma.cpp.
#include "backend/cuda/kernels/moe_gemm_wgmma.cuh"
#include "backend/cuda/moe_gemm_wgmma_detail.h"
#include "backend/cuda/smem_limit.h"

namespace k2::cuda::detail {
namespace {

// Calls f.template operator()<kMaxN>() for max_n in {16, 32, 64} (three instantiations).
template <typename F>
cudaError_t dispatch(int max_n, F&& f) {
    switch (max_n) {
        case 16:
            return f.template operator()<16>();
        case 32:
            return f.template operator()<32>();
        case 64:
            return f.template operator()<64>();
        default:
            return cudaErrorInvalidValue;
    }
}

}  // namespace

cudaError_t launch_moe_gemm_wgmma_kernel(const CUtensorMap& tmap_w, const Fp8GroupedGemmParams& p, int max_n, int grid,
                                         cudaStream_t stream) {
    return dispatch(max_n, [&]<int kMaxN>() {
        if (const cudaError_t status =
                allow_dynamic_smem<kernels::moe_gemm_wgmma_kernel<kMaxN>>(kernels::MoeWgmmaLayout<kMaxN>::kSmemBytes);
            status != cudaSuccess) {
            return status;
        }
        using L = kernels::MoeWgmmaLayout<kMaxN>;
        kernels::moe_gemm_wgmma_kernel<kMaxN>
            <<<static_cast<unsigned>(grid), L::kThreads, L::kSmemBytes, stream>>>(tmap_w, p);
        return cudaGetLastError();
    });
}

cudaError_t moe_gemm_wgmma_blocks_per_sm(int max_n, int* blocks) {
    return dispatch(max_n, [&]<int kMaxN>() {
        if (const cudaError_t status =
                allow_dynamic_smem<kernels::moe_gemm_wgmma_kernel<kMaxN>>(kernels::MoeWgmmaLayout<kMaxN>::kSmemBytes);
            status != cudaSuccess) {
            return status;
        }
        using L = kernels::MoeWgmmaLayout<kMaxN>;
        return cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, kernels::moe_gemm_wgmma_kernel<kMaxN>, L::kThreads,
                                                             L::kSmemBytes);
    });
}

}  // namespace k2::cuda::detail

// Raw launches of the MoE data-movement kernels and the grouped FP8 decode GEMM (validation in moe_ops.cpp).
#include "backend/cuda/kernels/fp8_grouped_gemm.cuh"
#include "backend/cuda/kernels/moe_ops.cuh"
#include "backend/cuda/moe_ops_detail.h"

namespace k2::cuda::detail {

cudaError_t launch_moe_permute_kernel(const MoePermuteParams& p, cudaStream_t stream) {
    kernels::moe_permute_kernel<<<1, kernels::kPermuteThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

cudaError_t launch_moe_gather_kernel(const MoeGatherParams& p, cudaStream_t stream) {
    kernels::moe_gather_kernel<<<static_cast<unsigned>(p.num_rows), kernels::kGatherThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

cudaError_t launch_fp8_grouped_gemm_decode_kernel(const Fp8GroupedGemmParams& p, int max_tiles, cudaStream_t stream) {
    static_assert(kernels::kDecodeRowsPerBlock == 64);
    const dim3 grid(static_cast<unsigned>(p.n / kernels::kDecodeRowsPerBlock), static_cast<unsigned>(p.num_experts),
                    1);
    // NOTE: four instantiations only (CI compiles this on 2 cores).
    if (max_tiles <= 1) {
        kernels::fp8_grouped_gemm_decode_kernel<1><<<grid, kernels::kDecodeThreads, 0, stream>>>(p);
    } else if (max_tiles <= 2) {
        kernels::fp8_grouped_gemm_decode_kernel<2><<<grid, kernels::kDecodeThreads, 0, stream>>>(p);
    } else if (max_tiles <= 4) {
        kernels::fp8_grouped_gemm_decode_kernel<4><<<grid, kernels::kDecodeThreads, 0, stream>>>(p);
    } else {
        kernels::fp8_grouped_gemm_decode_kernel<8><<<grid, kernels::kDecodeThreads, 0, stream>>>(p);
    }
    return cudaGetLastError();
}

cudaError_t launch_moe_combine_kernel(const MoeCombineParams& p, cudaStream_t stream) {
    constexpr int64_t kColsPerBlock = kernels::kCombineThreads * kernels::kCombineVec;
    const auto col_blocks = static_cast<unsigned>((p.hidden + kColsPerBlock - 1) / kColsPerBlock);
    const dim3 grid(static_cast<unsigned>(p.num_tokens), col_blocks, 1);
    kernels::moe_combine_kernel<<<grid, kernels::kCombineThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace k2::cuda::detail

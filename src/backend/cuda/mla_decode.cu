// Raw launches of the MLA decode kernels (validation and the split choice are in mla_decode.cpp).
#include "backend/cuda/kernels/mla_decode.cuh"
#include "backend/cuda/launch_detail.h"

namespace k2::cuda::detail {

cudaError_t launch_mla_decode_kernels(const MlaDecodeParams& p, int num_splits, int pages_per_split,
                                      cudaStream_t stream) {
    static const cudaError_t attribute_status = cudaFuncSetAttribute(
        kernels::mla_decode_split_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kernels::kMlaSmemBytes);
    if (attribute_status != cudaSuccess) {
        return attribute_status;
    }
    const dim3 grid(static_cast<unsigned>(num_splits), static_cast<unsigned>(p.num_seqs),
                    static_cast<unsigned>(p.num_heads / kMlaHeadsPerCta));
    kernels::mla_decode_split_kernel<<<grid, kernels::kMlaThreads, kernels::kMlaSmemBytes, stream>>>(p, num_splits,
                                                                                                   pages_per_split);
    const cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess) {
        return status;
    }
    kernels::mla_decode_combine_kernel<<<static_cast<unsigned>(p.num_seqs * p.num_heads), 128, 0, stream>>>(
        p, num_splits);
    return cudaGetLastError();
}

}  // namespace k2::cuda::detail

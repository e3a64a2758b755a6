// Raw launches of the MLA decode kernels (validation and the split choice are in mla_decode.cpp).
#include "backend/cuda/kernels/mla_decode.cuh"
#include "backend/cuda/launch_detail.h"
#include "backend/cuda/smem_limit.h"

namespace k2::cuda::detail {

namespace {

template <bool kFp8>
cudaError_t launch_split(const MlaDecodeParams& p, int num_splits, int pages_per_split, cudaStream_t stream) {
    const cudaError_t attribute_status =
        allow_dynamic_smem<kernels::mla_decode_split_kernel<kFp8>>(kernels::kMlaSmemBytes);
    if (attribute_status != cudaSuccess) {
        return attribute_status;
    }
    const dim3 grid(static_cast<unsigned>(num_splits), static_cast<unsigned>(p.num_seqs),
                    static_cast<unsigned>(mla_decode_head_groups(p.num_heads)));
    kernels::mla_decode_split_kernel<kFp8>
        <<<grid, kernels::kMlaThreads, kernels::kMlaSmemBytes, stream>>>(p, num_splits, pages_per_split);
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_mla_decode_kernels(const MlaDecodeParams& p, int num_splits, int pages_per_split,
                                      cudaStream_t stream) {
    const cudaError_t status = p.cache_fp8 != nullptr ? launch_split<true>(p, num_splits, pages_per_split, stream)
                                                      : launch_split<false>(p, num_splits, pages_per_split, stream);
    if (status != cudaSuccess) {
        return status;
    }
    return launch_mla_decode_combine_kernel(p, num_splits, stream);
}

cudaError_t launch_mla_decode_combine_kernel(const MlaDecodeParams& p, int num_splits, cudaStream_t stream) {
    kernels::mla_decode_combine_kernel<<<static_cast<unsigned>(p.num_seqs * p.num_heads), 128, 0, stream>>>(p,
                                                                                                            num_splits);
    return cudaGetLastError();
}

}  // namespace k2::cuda::detail

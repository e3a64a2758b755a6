// Raw launches of the mla_prefill.h kernels (validation is in mla_prefill.cpp).

#include "backend/cuda/kernels/mla_prefill.cuh"
#include "backend/cuda/mla_prefill_detail.h"
#include "backend/cuda/smem_limit.h"

namespace k2::cuda::detail {
namespace {

template <int kWarps, int kMt>
cudaError_t launch_with(const MlaPrefillParams& p, cudaStream_t stream) {
    using Shape = kernels::mla_prefill::Shape<kWarps, kMt>;
    const cudaError_t attribute_status = allow_dynamic_smem<kernels::mla_prefill::mla_prefill_kernel<kWarps, kMt>>(
        kernels::mla_prefill::Shape<kWarps, kMt>::kSmemBytes);
    if (attribute_status != cudaSuccess) {
        return attribute_status;
    }
    const dim3 grid(static_cast<unsigned>(p.heads),
                    static_cast<unsigned>((p.max_q_len + Shape::kRowsQ - 1) / Shape::kRowsQ),
                    static_cast<unsigned>(p.num_seqs));
    kernels::mla_prefill::mla_prefill_kernel<kWarps, kMt><<<grid, Shape::kThreads, Shape::kSmemBytes, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_mla_prefill_kernel(const MlaPrefillParams& p, cudaStream_t stream) {
    return p.warps_per_cta == 4 ? launch_with<4, 2>(p, stream) : launch_with<8, 1>(p, stream);
}

cudaError_t launch_latent_gather_kernel(const LatentGatherParams& p, cudaStream_t stream) {
    const int64_t units = p.num_rows * (p.entry / 8);
    const int64_t blocks = (units + kernels::mla_prefill::kGatherThreads - 1) / kernels::mla_prefill::kGatherThreads;
    kernels::mla_prefill::
        latent_gather_kernel<<<static_cast<unsigned>(blocks), kernels::mla_prefill::kGatherThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace k2::cuda::detail

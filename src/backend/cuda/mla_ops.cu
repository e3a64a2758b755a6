// Raw launches of the mla_ops.h kernels (validation is in mla_ops.cpp).

#include "backend/cuda/kernels/mla_attention.cuh"
#include "backend/cuda/kernels/mla_ops.cuh"
#include "backend/cuda/mla_ops_detail.h"
#include "backend/cuda/smem_limit.h"

namespace k2::cuda::detail {
namespace {}  // namespace

cudaError_t launch_latent_store_kernel(const LatentStoreParams& p, cudaStream_t stream) {
    kernels::latent_store_kernel<<<static_cast<unsigned>(p.num_tokens), kernels::kLatentStoreThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

cudaError_t launch_query_rope_kernel(const QueryRopeParams& p, cudaStream_t stream) {
    kernels::query_rope_kernel<<<static_cast<unsigned>(p.num_tokens), kernels::kQueryRopeThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

cudaError_t launch_mla_attention_kernel(const MlaAttentionParams& p, const MlaAttentionTiling& tiling,
                                        cudaStream_t stream) {
    const cudaError_t attribute_status = allow_dynamic_smem<kernels::mla_attn::mla_attention_kernel>(
        mla_attention_smem_bytes(kernels::mla_attn::kMaxPadded));
    if (attribute_status != cudaSuccess) {
        return attribute_status;
    }
    const kernels::mla_attn::CtaShape shape{tiling.heads_per_cta, tiling.tokens_per_cta, tiling.padded_dim};
    const int64_t num_groups = (p.num_tokens + tiling.tokens_per_cta - 1) / tiling.tokens_per_cta;
    const dim3 grid(static_cast<unsigned>(num_groups),
                    static_cast<unsigned>((p.heads + tiling.heads_per_cta - 1) / tiling.heads_per_cta));
    kernels::mla_attn::mla_attention_kernel<<<grid, kernels::mla_attn::kThreads,
                                              mla_attention_smem_bytes(tiling.padded_dim), stream>>>(p, shape);
    return cudaGetLastError();
}

}  // namespace k2::cuda::detail

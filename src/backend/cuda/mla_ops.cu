// Raw launches of the mla_ops.h kernels (validation is in mla_ops.cpp).
#include <atomic>
#include <cstdint>

#include "backend/cuda/kernels/mla_attention.cuh"
#include "backend/cuda/kernels/mla_ops.cuh"
#include "backend/cuda/mla_ops_detail.h"

namespace k2::cuda::detail {
namespace {

// Opts the attention kernel into > 48 KB of dynamic shared memory, once per device (the attribute is per device:
// a process driving several GPUs must set it on each).
cudaError_t allow_attention_smem() {
    static std::atomic<uint64_t> done_mask{0};
    int device = 0;
    const cudaError_t device_status = cudaGetDevice(&device);
    if (device_status != cudaSuccess) {
        return device_status;
    }
    const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
    if (bit != 0 && (done_mask.load(std::memory_order_relaxed) & bit) != 0) {
        return cudaSuccess;
    }
    const cudaError_t status =
        cudaFuncSetAttribute(kernels::mla_attn::mla_attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             mla_attention_smem_bytes(kernels::mla_attn::kMaxPadded));
    if (status == cudaSuccess) {
        done_mask.fetch_or(bit, std::memory_order_relaxed);
    }
    return status;
}

}  // namespace

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
    const cudaError_t attribute_status = allow_attention_smem();
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

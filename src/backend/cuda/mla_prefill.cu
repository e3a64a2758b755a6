// Raw launches of the mla_prefill.h kernels (validation is in mla_prefill.cpp).
#include <atomic>
#include <cstdint>

#include "backend/cuda/kernels/mla_prefill.cuh"
#include "backend/cuda/mla_prefill_detail.h"

namespace k2::cuda::detail {
namespace {

// Opts the kernel into > 48 KB of dynamic shared memory, once per device (the attribute is per device).
template <int kWarps, int kMt>
cudaError_t allow_prefill_smem() {
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
    const cudaError_t status = cudaFuncSetAttribute(kernels::mla_prefill::mla_prefill_kernel<kWarps, kMt>,
                                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                    kernels::mla_prefill::Shape<kWarps, kMt>::kSmemBytes);
    if (status == cudaSuccess) {
        done_mask.fetch_or(bit, std::memory_order_relaxed);
    }
    return status;
}

template <int kWarps, int kMt>
cudaError_t launch_with(const MlaPrefillParams& p, cudaStream_t stream) {
    using Shape = kernels::mla_prefill::Shape<kWarps, kMt>;
    const cudaError_t attribute_status = allow_prefill_smem<kWarps, kMt>();
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

// Raw launch of the wgmma MLA prefill kernel (kernels/mla_prefill_wgmma.cuh); validation is in mla_prefill.cpp.
#include <atomic>
#include <cstdint>

#include "backend/cuda/kernels/mla_prefill_wgmma.cuh"
#include "backend/cuda/mla_prefill_wgmma_detail.h"

namespace k2::cuda::detail {
namespace {

namespace kw = kernels::mla_prefill_wgmma;

// Opts the kernel into > 48 KB of dynamic shared memory, once per device (the attribute is per device).
template <bool kPingPong, bool kSplit, bool kTilesInner>
cudaError_t allow_wgmma_smem() {
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
    const cudaError_t status = cudaFuncSetAttribute(kw::mla_prefill_wgmma_kernel<kPingPong, kSplit, kTilesInner>,
                                                    cudaFuncAttributeMaxDynamicSharedMemorySize, kw::kSmemBytes);
    if (status == cudaSuccess) {
        done_mask.fetch_or(bit, std::memory_order_relaxed);
    }
    return status;
}

template <bool kPingPong, bool kSplit, bool kTilesInner>
cudaError_t launch_with(const MlaPrefillParams& p, cudaStream_t stream) {
    const cudaError_t attribute_status = allow_wgmma_smem<kPingPong, kSplit, kTilesInner>();
    if (attribute_status != cudaSuccess) {
        return attribute_status;
    }
    const auto heads = static_cast<unsigned>(p.heads);
    const auto q_tiles = static_cast<unsigned>((p.max_q_len + kw::kRowsQ - 1) / kw::kRowsQ);
    const dim3 grid(kTilesInner ? q_tiles : heads, kTilesInner ? heads : q_tiles, static_cast<unsigned>(p.num_seqs));
    kw::mla_prefill_wgmma_kernel<kPingPong, kSplit, kTilesInner><<<grid, kw::kThreads, kw::kSmemBytes, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_mla_prefill_wgmma_kernel(const MlaPrefillParams& p, WgmmaPrefillSchedule schedule,
                                            cudaStream_t stream) {
    switch (schedule) {
        case WgmmaPrefillSchedule::kPingPong:
            return launch_with<true, false, true>(p, stream);
        case WgmmaPrefillSchedule::kOverlap:
            return launch_with<false, true, true>(p, stream);
        case WgmmaPrefillSchedule::kLockstepHeadsInner:
            return launch_with<false, false, false>(p, stream);
        case WgmmaPrefillSchedule::kLockstep:
            break;
    }
    return launch_with<false, false, true>(p, stream);
}

}  // namespace k2::cuda::detail

// Raw launch of the wgmma MLA prefill kernel (kernels/mla_prefill_wgmma.cuh); validation is in mla_prefill.cpp.

#include "backend/cuda/kernels/mla_prefill_wgmma.cuh"
#include "backend/cuda/mla_prefill_wgmma_detail.h"
#include "backend/cuda/smem_limit.h"

namespace k2::cuda::detail {
namespace {

namespace kw = kernels::mla_prefill_wgmma;

template <bool kPingPong, bool kSplit, bool kTilesInner>
cudaError_t launch_with(const MlaPrefillParams& p, cudaStream_t stream) {
    const cudaError_t attribute_status =
        allow_dynamic_smem<kw::mla_prefill_wgmma_kernel<kPingPong, kSplit, kTilesInner>>(kw::kSmemBytes);
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

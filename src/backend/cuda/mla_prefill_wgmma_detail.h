// Raw launch of the wgmma MLA prefill kernel (mla_prefill_wgmma.cu): no validation, returns the launch status.
// launch_mla_prefill (mla_prefill.cpp) validates the parameters and picks the kernel.
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/mla_prefill.h"

namespace k2::cuda::detail {

// The warpgroups' schedules of kernels/mla_prefill_wgmma.cuh: lockstep, ping-pong (they take turns issuing their
// MMAs), overlap (lockstep, the softmax's exp2 part running while the previous P V is on the tensor cores); all with
// the query tiles of a head as the grid's fastest dimension, except kLockstepHeadsInner (heads fastest).
enum class WgmmaPrefillSchedule { kLockstep, kPingPong, kOverlap, kLockstepHeadsInner };

cudaError_t launch_mla_prefill_wgmma_kernel(const MlaPrefillParams& params, WgmmaPrefillSchedule schedule,
                                            cudaStream_t stream);

}  // namespace k2::cuda::detail

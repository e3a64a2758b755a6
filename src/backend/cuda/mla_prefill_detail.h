// Raw kernel launch of mla_prefill.h (mla_prefill.cu): no validation, returns the launch status. The public
// launch_mla_prefill in mla_prefill.cpp validates the parameters first.
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/mla_prefill.h"

namespace k2::cuda::detail {

cudaError_t launch_mla_prefill_kernel(const MlaPrefillParams& params, cudaStream_t stream);
cudaError_t launch_latent_gather_kernel(const LatentGatherParams& params, cudaStream_t stream);

}  // namespace k2::cuda::detail

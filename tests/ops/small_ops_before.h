// The small decode ops as they were before bench/small_ops.sh's changes (small_ops_before.cu): same parameters,
// the old kernels and launch shapes. Raw launches: the caller validates and checks the returned status. Only the
// fields the old kernels knew are read (RmsNormQuantParams::out_bf16 is ignored).
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/fp8_quant.h"
#include "backend/cuda/model_ops.h"
#include "backend/cuda/moe_layout.h"
#include "backend/cuda/moe_ops.h"
#include "backend/cuda/moe_router.h"

namespace k2::cuda::before {

cudaError_t launch_rms_norm(const RmsNormParams& params, bool vec8, cudaStream_t stream);
cudaError_t launch_rms_norm_quant(const RmsNormQuantParams& params, cudaStream_t stream);
cudaError_t launch_moe_router(const MoeRouterParams& params, cudaStream_t stream);
cudaError_t launch_moe_permute(const MoePermuteParams& params, cudaStream_t stream);
cudaError_t launch_moe_gather(const MoeGatherParams& params, cudaStream_t stream);
cudaError_t launch_moe_combine(const MoeCombineParams& params, cudaStream_t stream);
cudaError_t launch_moe_scales_to_expert_blocked(const MoeScaleLayoutParams& params, cudaStream_t stream);

}  // namespace k2::cuda::before

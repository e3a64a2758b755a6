// Raw kernel launches implemented in the .cu files. They do no validation and return the launch status; the
// public launch_<op> functions (in the .cpp files) validate, throw k2::Error and call these.
// NOTE: nvcc's front end cannot evaluate fmt's consteval format strings, which is why this split exists.
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/device_copy.h"
#include "backend/cuda/fp8_gemm.h"
#include "backend/cuda/fp8_quant.h"
#include "backend/cuda/mla_decode.h"
#include "backend/cuda/moe_router.h"

namespace k2::cuda::detail {

cudaError_t launch_device_copy_kernel(const DeviceCopyParams& params, int num_sms, cudaStream_t stream);

cudaError_t launch_rms_norm_quant_kernel(const RmsNormQuantParams& params, cudaStream_t stream);
cudaError_t launch_silu_mul_quant_kernel(const SiluMulQuantParams& params, cudaStream_t stream);
cudaError_t launch_fp8_quant_kernel(const Fp8QuantParams& params, cudaStream_t stream);

// One pass of at most 64 tokens: grid [ceil(n / 64), splits], cluster [1, splits].
cudaError_t launch_fp8_gemm_decode_kernel(const Fp8GemmParams& params, int splits, int kb_per_split,
                                          cudaStream_t stream);
inline constexpr int kDecodeRowsPerBlock = 64;

cudaError_t launch_moe_router_kernel(const MoeRouterParams& params, cudaStream_t stream);

// The split kernel, then the log-sum-exp combine.
cudaError_t launch_mla_decode_kernels(const MlaDecodeParams& params, int num_splits, int pages_per_split,
                                      cudaStream_t stream);
// The log-sum-exp merge of the split partials in params.workspace (the mma.sync and the wgmma split kernels write
// the same layout).
cudaError_t launch_mla_decode_combine_kernel(const MlaDecodeParams& params, int num_splits, cudaStream_t stream);

}  // namespace k2::cuda::detail

// Raw kernel launches of model_ops.h (model_ops.cu). No validation: the public launch_* functions in
// model_ops.cpp check the parameters, then call these and turn a failed status into a k2::Error.
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/model_ops.h"

namespace k2::cuda::detail {

// vec8: rows are copied as 16-byte vectors (width % 8 == 0, 16-byte aligned table/out); otherwise element-wise.
cudaError_t launch_embedding_kernel(const EmbeddingParams& params, bool vec8, cudaStream_t stream);
cudaError_t launch_gather_rows_kernel(const GatherRowsParams& params, bool vec8, cudaStream_t stream);
// vec8: hidden % 8 == 0 and every row (x, residual, weight, out) starts 16-byte aligned.
cudaError_t launch_rms_norm_kernel(const RmsNormParams& params, bool vec8, cudaStream_t stream);
cudaError_t launch_f32_to_bf16_kernel(const F32ToBf16Params& params, cudaStream_t stream);

}  // namespace k2::cuda::detail

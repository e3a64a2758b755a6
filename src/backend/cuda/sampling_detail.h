// Raw kernel launch of sampling.h (sampling.cu); launch_sample_rows in sampling.cpp validates first.
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/sampling.h"

namespace k2::cuda::detail {

cudaError_t launch_sample_rows_kernel(const SampleRowsParams& params, cudaStream_t stream);

}  // namespace k2::cuda::detail

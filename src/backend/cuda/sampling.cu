// Raw launch of the sampling kernel (validation is in sampling.cpp).
#include "backend/cuda/kernels/sampling.cuh"
#include "backend/cuda/sampling_detail.h"

namespace k2::cuda::detail {

cudaError_t launch_sample_rows_kernel(const SampleRowsParams& p, cudaStream_t stream) {
    kernels::sample_rows_kernel<<<static_cast<unsigned>(p.rows), kernels::kSampleThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace k2::cuda::detail

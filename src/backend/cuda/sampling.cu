// Raw launches of the sampling kernels (validation is in sampling.cpp).
#include "backend/cuda/kernels/sampling.cuh"
#include "backend/cuda/sampling_detail.h"

namespace k2::cuda::detail {

cudaError_t launch_sample_rows_kernel(const SampleRowsParams& p, cudaStream_t stream) {
    kernels::sample_rows_kernel<<<static_cast<unsigned>(p.rows), kernels::kSampleThreads, 0, stream>>>(p);
    if (p.filter != nullptr) {  // Filtered rows may be among them
        const cudaError_t error = cudaGetLastError();
        if (error != cudaSuccess) {
            return error;
        }
        kernels::sample_filtered_rows_kernel<<<static_cast<unsigned>(p.rows), kernels::kFilterThreads, 0, stream>>>(p);
    }
    return cudaGetLastError();
}

}  // namespace k2::cuda::detail

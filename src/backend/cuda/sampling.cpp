// Host launcher of sampling.h: validates the rows' shape and pointers (naming the bad value), then launches.
#include "backend/cuda/sampling.h"

#include <limits>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/sampling_detail.h"

namespace k2::cuda {

void launch_sample_rows(const SampleRowsParams& p, cudaStream_t stream) {
    K2_CHECK(p.rows >= 0 && p.rows <= std::numeric_limits<int32_t>::max(), "sample_rows: rows = {} out of range",
             p.rows);
    if (p.rows == 0) {
        return;
    }
    K2_CHECK(p.vocab > 0 && p.vocab <= std::numeric_limits<int32_t>::max(), "sample_rows: vocab = {} out of range",
             p.vocab);
    K2_CHECK(p.stride >= p.vocab, "sample_rows: stride {} < vocab {}", p.stride, p.vocab);
    K2_CHECK(p.logits != nullptr && p.mode != nullptr && p.inv_temperature != nullptr && p.uniform != nullptr &&
                 p.tokens != nullptr,
             "sample_rows: null logits, mode, inv_temperature, uniform or tokens");
    // NOTE: a null filter is allowed (callers without Filtered rows); the kernel skips a Filtered row without one.
    CUDA_CHECK(detail::launch_sample_rows_kernel(p, stream));
}

}  // namespace k2::cuda

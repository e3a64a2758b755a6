// Token sampling on the GPU for the rows whose logits need not reach the host: greedy (the first largest logit) and
// plain temperature draws (inverse CDF of softmax(logits / T) at a uniform the engine drew from the request's own
// generator). Every token is weighed with the host sampler's bits (core/fast_exp.h) and the CDF is walked in token
// order, so the same uniform picks the same token as the CPU reference (engine/sampler.h: greedy_token,
// draw_with_temperature) except where the target falls within float rounding of a token boundary (the partial sums
// are grouped differently). Rows with any other sampling (top-k / top-p / min-p, penalties, logprobs) are skipped and
// sampled on the host.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace k2::cuda {

enum class SampleMode : int32_t { Skip = 0, Greedy = 1, Temperature = 2 };

struct SampleRowsParams {
    const float* logits = nullptr;           // [rows, vocab] f32, row stride `stride`
    const int32_t* mode = nullptr;           // [rows] SampleMode
    const float* inv_temperature = nullptr;  // [rows] float(1 / T) (Temperature rows)
    const double* uniform = nullptr;         // [rows] in [0, 1) (Temperature rows)
    int32_t* tokens = nullptr;               // [rows] out; Skip rows are left untouched
    int64_t rows = 0;                        // 0: nothing to do
    int64_t vocab = 0;
    int64_t stride = 0;  // >= vocab
};

void launch_sample_rows(const SampleRowsParams& params, cudaStream_t stream);

}  // namespace k2::cuda

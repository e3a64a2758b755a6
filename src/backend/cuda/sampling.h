// Token sampling on the GPU for the rows whose logits need not reach the host: greedy (the first largest logit),
// plain temperature draws (inverse CDF of softmax(logits / T) at a uniform the engine drew from the request's own
// generator) and filtered draws (min-p, top-k, top-p, in the host sampler's order and with its tie rules).
// Temperature rows weigh every token with the host sampler's bits (core/fast_exp.h) and walk the CDF in token order,
// so the same uniform picks the same token as the CPU reference (engine/sampler.h: greedy_token,
// draw_with_temperature) except where the target falls within float rounding of a token boundary (the partial sums
// are grouped differently). Filtered rows follow engine/sampler.h's sampling_distribution + draw_token; where they can
// differ from it is stated in kernels/sampling_filter.cuh. Rows with penalties, logit_bias, min_tokens or logprobs are
// skipped and sampled on the host.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace k2::cuda {

enum class SampleMode : int32_t { Skip = 0, Greedy = 1, Temperature = 2, Filtered = 3 };

// What a Filtered row draws from (engine/sampler.h: sampling_distribution): softmax(logits / temperature), then
// min-p, top-k and top-p. A row with none of the three active (top_k <= 0 or >= vocab, top_p >= 1, min_p <= 0)
// is drawn as a Temperature row, as the host sampler does.
struct SampleFilter {
    double temperature = 1.0;  // max(T, kGreedyTemperature), the host softmax's divisor
    double top_p = 1.0;        // in (0, 1]; 1 disables
    double min_p = 0.0;        // in [0, 1]; 0 disables
    int32_t top_k = 0;         // <= 0 or >= vocab disables
    int32_t padding = 0;
};
static_assert(sizeof(SampleFilter) == 32, "SampleFilter is packed into the model's per-step upload");

struct SampleRowsParams {
    const float* logits = nullptr;           // [rows, vocab] f32, row stride `stride`
    const int32_t* mode = nullptr;           // [rows] SampleMode
    const float* inv_temperature = nullptr;  // [rows] float(1 / T) (Temperature rows, unfiltered Filtered rows)
    const double* uniform = nullptr;         // [rows] in [0, 1) (Temperature and Filtered rows)
    const SampleFilter* filter = nullptr;    // [rows] (Filtered rows; may be null when no row is Filtered)
    int32_t* tokens = nullptr;               // [rows] out; Skip rows are left untouched
    int64_t rows = 0;                        // 0: nothing to do
    int64_t vocab = 0;
    int64_t stride = 0;  // >= vocab
};

// A Filtered row with a null `filter` is a bug of the caller that the launch cannot see (the modes are on the
// device): the kernel then leaves that row's token untouched.
void launch_sample_rows(const SampleRowsParams& params, cudaStream_t stream);

}  // namespace k2::cuda

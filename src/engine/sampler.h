// Sampler: one token from one row of float logits, with vLLM v1 semantics (vllm/v1/sample/sampler.py):
// logprobs come from the raw logits; then min_tokens masking, logit_bias, penalties, greedy argmax or temperature,
// min-p, top-k, top-p and a draw from the request's own generator. Plain CPU code.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <vector>

#include "engine/engine_api.h"
#include "engine/sampling_params.h"
#include "model/forward_batch.h"

namespace k2 {

inline constexpr double kGreedyTemperature = 1e-5;

// Repetition penalty on every token of prompt + output (positive logits divided, negative multiplied),
// then frequency (x count) and presence (x 1) penalties on output tokens only.
void apply_penalties(std::span<float> logits, const SamplingParams& params, std::span<const int32_t> prompt_ids,
                     std::span<const int32_t> output_ids);

// Adds the request's logit_bias to `logits` (vLLM applies it, like min_tokens, before the penalties). [vocab_size]
void apply_logit_bias(std::span<float> logits, const SamplingParams& params);

// The distribution a non-greedy request draws from, given penalized logits: softmax(logits / temperature),
// then min-p, top-k and top-p masks, renormalized. [vocab_size]
std::vector<double> sampling_distribution(std::span<const float> logits, const SamplingParams& params);

// Inverse-CDF draw from a (normalized) distribution.
int32_t draw_token(std::span<const double> probs, std::mt19937_64& rng);

// The same at a given uniform in [0, 1): the first token whose cumulative probability exceeds it.
int32_t draw_token_at(std::span<const double> probs, double uniform);

// sample_token's draw for a non-greedy request whose logits it does not change, at `uniform`: draw_with_temperature
// when no min-p / top-k / top-p applies, else draw_token_at(sampling_distribution(...)). [vocab_size]
int32_t draw_sampled(std::span<const float> logits, const SamplingParams& params, double uniform);

// The one uniform in [0, 1) a draw takes from the request's generator.
double draw_uniform(std::mt19937_64& rng);

// Greedy: the first index of the largest logit (std::max_element's answer). NaN-free rows. [vocab_size]
int32_t greedy_token(std::span<const float> logits);

// Inverse-CDF draw from softmax(logits / T) at `uniform` (no top-k, top-p or min-p: what most requests ask for),
// walking the tokens in id order; inv_temperature = float(1 / T); -inf logits weigh 0. The CUDA sampler
// (backend/cuda/sampling.h) weighs every token with the same bits (core/fast_exp.h). [vocab_size]
int32_t draw_with_temperature(std::span<const float> logits, float inv_temperature, double uniform);

// Where a request's tokens can be sampled when the model samples on its device (Model::samples_on_device): greedy,
// plain temperature and top-k / top-p / min-p draws there, everything that reads or changes the logits on the host
// (penalties, logit_bias, min_tokens, logprobs).
RowSampling device_row_sampling(const SamplingParams& params);

// log_softmax of `logits` at `token_id` (with its rank) plus the `num_top` most likely tokens, highest first.
TokenLogprobs compute_logprobs(std::span<const float> logits, int32_t token_id, int num_top);

struct SampleContext {
    const SamplingParams* params = nullptr;
    std::span<const int32_t> prompt_ids;
    std::span<const int32_t> output_ids;
    std::span<const int32_t> min_tokens_masked_ids;  // EOS + stop_token_ids, masked while below min_tokens
    std::mt19937_64* rng = nullptr;
};

struct SampleResult {
    int32_t token_id = 0;
    std::optional<TokenLogprobs> logprobs;  // when params.logprobs is set
};

// Samples one token from one row of raw logits. [vocab_size]
SampleResult sample_token(std::span<const float> logits, const SampleContext& context);

}  // namespace k2

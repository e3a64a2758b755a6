// SamplingParams: what one request asks of the sampler and the stop checker (vLLM's fields and defaults).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace k2 {

struct SamplingParams {
    int n = 1;
    double temperature = 1.0;  // < 1e-5 means greedy
    double top_p = 1.0;
    int top_k = 0;  // 0 or -1 disables
    double min_p = 0.0;
    std::optional<int64_t> seed;
    double presence_penalty = 0.0;
    double frequency_penalty = 0.0;
    double repetition_penalty = 1.0;
    std::vector<std::string> stop;  // excluded from the output unless include_stop_str_in_output
    bool include_stop_str_in_output = false;
    std::vector<int32_t> stop_token_ids;
    bool ignore_eos = false;
    int max_tokens = 16;
    int min_tokens = 0;
    std::optional<int> logprobs;         // number of top logprobs per sampled token (0 = sampled only)
    std::optional<int> prompt_logprobs;  // number of top logprobs per prompt token
    bool skip_special_tokens = true;
    // OpenAI logit_bias: (token id, bias in [-100, 100]) added to the raw logits before penalties and temperature.
    std::vector<std::pair<int32_t, float>> logit_bias;
};

}  // namespace k2

#include "engine/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "core/fast_exp.h"

namespace k2 {
namespace {

constexpr float kMasked = -std::numeric_limits<float>::infinity();
constexpr size_t kDrawBlock = 1024;  // weights summed per block, so the walk skips whole blocks

// Softmax in double for stable distributions. [vocab_size]
std::vector<double> softmax(std::span<const float> logits, double temperature) {
    const float max_logit = *std::max_element(logits.begin(), logits.end());
    std::vector<double> probs(logits.size());
    double sum = 0.0;
    for (size_t i = 0; i < logits.size(); ++i) {
        probs[i] = logits[i] == kMasked ? 0.0 : std::exp((static_cast<double>(logits[i]) - max_logit) / temperature);
        sum += probs[i];
    }
    for (double& p : probs)
        p /= sum;
    return probs;
}

void normalize(std::vector<double>& probs) {
    const double sum = std::accumulate(probs.begin(), probs.end(), 0.0);
    for (double& p : probs)
        p /= sum;
}

// vLLM's apply_top_k_top_p: top-k drops tokens below the k-th largest probability (ties stay); top-p then
// drops every token whose more likely tokens already sum to >= top_p (the most likely always stays).
void apply_top_k(std::vector<double>& probs, int top_k) {
    if (top_k <= 0 || static_cast<size_t>(top_k) >= probs.size())
        return;
    std::vector<double> sorted(probs);
    std::nth_element(sorted.begin(), sorted.begin() + (top_k - 1), sorted.end(), std::greater<>());
    const double kth = sorted[static_cast<size_t>(top_k - 1)];
    for (double& p : probs) {
        if (p < kth)
            p = 0.0;
    }
    normalize(probs);
}

void apply_top_p(std::vector<double>& probs, double top_p) {
    if (top_p >= 1.0)
        return;
    const size_t vocab = probs.size();
    std::vector<int32_t> order(vocab);
    std::iota(order.begin(), order.end(), 0);
    auto more_likely = [&](int32_t a, int32_t b) { return probs[a] > probs[b] || (probs[a] == probs[b] && a < b); };
    // NOTE: the nucleus is usually small, so sort a growing prefix instead of the whole (163,840-token) vocab.
    for (size_t prefix = std::min<size_t>(vocab, 256);; prefix = std::min(vocab, prefix * 8)) {
        std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(prefix), order.end(), more_likely);
        double cumulative = 0.0;
        size_t keep = 0;
        while (keep < prefix && cumulative < top_p)
            cumulative += probs[order[keep++]];
        if (cumulative >= top_p || prefix == vocab) {
            for (size_t rank = std::max<size_t>(keep, 1); rank < vocab; ++rank)
                probs[order[rank]] = 0.0;
            break;
        }
    }
    normalize(probs);
}

// The largest logit, vectorized (one scalar chain of max instructions was a third of a draw's time). NaN-free rows.
float row_max(std::span<const float> logits) {
    float most = kMasked;
    const float* row = logits.data();
#pragma omp simd reduction(max : most)
    for (size_t i = 0; i < logits.size(); ++i) {
        most = row[i] > most ? row[i] : most;
    }
    return most;
}

}  // namespace

int32_t greedy_token(std::span<const float> logits) {
    const float most = row_max(logits);
    const auto it = std::find(logits.begin(), logits.end(), most);
    return it == logits.end() ? 0 : static_cast<int32_t>(it - logits.begin());
}

// Without materializing the normalized distribution: the weights in a vectorized pass with per-block sums, then the
// walk over the block sums and inside one block.
int32_t draw_with_temperature(std::span<const float> logits, float inv_temperature, double uniform) {
    const float max_logit = row_max(logits);
    const float inv_t = inv_temperature;
    const size_t vocab = logits.size();
    const size_t num_blocks = (vocab + kDrawBlock - 1) / kDrawBlock;
    thread_local std::vector<float> weights;      // [vocab_size]
    thread_local std::vector<double> block_sums;  // [num_blocks]
    weights.resize(vocab);
    block_sums.assign(num_blocks, 0.0);
    const float* in = logits.data();
    float* out = weights.data();
    double sum = 0.0;
    for (size_t b = 0; b < num_blocks; ++b) {
        const size_t end = std::min(vocab, (b + 1) * kDrawBlock);
        float block = 0.0f;  // <= 1024 terms of at most 1: float keeps ~1e-7 of it
#pragma omp simd reduction(+ : block)
        for (size_t i = b * kDrawBlock; i < end; ++i) {
            out[i] = draw_weight(in[i], max_logit, inv_t);
            block += out[i];
        }
        block_sums[b] = block;
        sum += block;
    }
    const double target = uniform * sum;
    double cumulative = 0.0;
    size_t b = 0;
    while (b + 1 < num_blocks && cumulative + block_sums[b] <= target) {
        cumulative += block_sums[b++];
    }
    // Inside the block (and past it, should its elementwise sum round below the block sum).
    int32_t last_nonzero = 0;
    for (size_t i = b * kDrawBlock; i < vocab; ++i) {
        if (out[i] <= 0.0f)
            continue;
        cumulative += out[i];
        last_nonzero = static_cast<int32_t>(i);
        if (target < cumulative)
            return last_nonzero;
    }
    return last_nonzero;  // rounding left the target above the total
}

double draw_uniform(std::mt19937_64& rng) {
    return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}

RowSampling device_row_sampling(const SamplingParams& params) {
    // NOTE: every request that needs the logits on the host stays there for all its steps (min_tokens too, though it
    // masks only the first ones): a request's uniforms are then drawn in one order whatever the step timing.
    const bool host = params.min_tokens > 0 || !params.logit_bias.empty() || params.repetition_penalty != 1.0 ||
                      params.frequency_penalty != 0.0 || params.presence_penalty != 0.0 ||
                      params.logprobs.has_value() || params.prompt_logprobs.has_value();
    if (host)
        return RowSampling::Host;
    if (params.temperature < kGreedyTemperature)
        return RowSampling::Greedy;
    const bool plain = params.min_p <= 0.0 && params.top_p >= 1.0 && params.top_k <= 0;
    return plain ? RowSampling::Temperature : RowSampling::Filtered;
}

void apply_penalties(std::span<float> logits, const SamplingParams& params, std::span<const int32_t> prompt_ids,
                     std::span<const int32_t> output_ids) {
    const auto vocab = static_cast<int32_t>(logits.size());
    if (params.repetition_penalty != 1.0) {
        const auto penalty = static_cast<float>(params.repetition_penalty);
        std::unordered_set<int32_t> seen(prompt_ids.begin(), prompt_ids.end());
        seen.insert(output_ids.begin(), output_ids.end());
        for (const int32_t id : seen) {
            if (id < 0 || id >= vocab)
                continue;
            float& logit = logits[static_cast<size_t>(id)];
            logit = logit > 0.0f ? logit / penalty : logit * penalty;
        }
    }
    if (params.frequency_penalty != 0.0 || params.presence_penalty != 0.0) {
        std::unordered_map<int32_t, int> counts;
        for (const int32_t id : output_ids)
            ++counts[id];
        for (const auto& [id, count] : counts) {
            if (id < 0 || id >= vocab)
                continue;
            logits[static_cast<size_t>(id)] -=
                static_cast<float>(params.frequency_penalty * count + params.presence_penalty);
        }
    }
}

void apply_logit_bias(std::span<float> logits, const SamplingParams& params) {
    for (const auto& [id, bias] : params.logit_bias) {
        if (id >= 0 && static_cast<size_t>(id) < logits.size())
            logits[static_cast<size_t>(id)] += bias;
    }
}

std::vector<double> sampling_distribution(std::span<const float> logits, const SamplingParams& params) {
    std::vector<double> probs = softmax(logits, std::max(params.temperature, kGreedyTemperature));
    if (params.min_p > 0.0) {
        const double threshold = params.min_p * *std::max_element(probs.begin(), probs.end());
        for (double& p : probs) {
            if (p < threshold)
                p = 0.0;
        }
        normalize(probs);
    }
    apply_top_k(probs, params.top_k);
    apply_top_p(probs, params.top_p);
    return probs;
}

int32_t draw_token(std::span<const double> probs, std::mt19937_64& rng) {
    return draw_token_at(probs, draw_uniform(rng));
}

int32_t draw_token_at(std::span<const double> probs, double u) {
    double cumulative = 0.0;
    int32_t last_nonzero = 0;
    for (size_t i = 0; i < probs.size(); ++i) {
        if (probs[i] <= 0.0)
            continue;
        cumulative += probs[i];
        last_nonzero = static_cast<int32_t>(i);
        if (u < cumulative)
            return last_nonzero;
    }
    return last_nonzero;  // rounding left u above the total
}

int32_t draw_sampled(std::span<const float> logits, const SamplingParams& params, double uniform) {
    const bool plain = params.min_p <= 0.0 && params.top_p >= 1.0 &&
                       (params.top_k <= 0 || static_cast<size_t>(params.top_k) >= logits.size());
    return plain ? draw_with_temperature(logits, static_cast<float>(1.0 / params.temperature), uniform)
                 : draw_token_at(sampling_distribution(logits, params), uniform);
}

TokenLogprobs compute_logprobs(std::span<const float> logits, int32_t token_id, int num_top) {
    const float max_logit = *std::max_element(logits.begin(), logits.end());
    double sum = 0.0;
    for (const float logit : logits)
        sum += std::exp(static_cast<double>(logit) - max_logit);
    const double log_z = max_logit + std::log(sum);
    auto logprob_of = [&](int32_t id) {
        return static_cast<float>(static_cast<double>(logits[static_cast<size_t>(id)]) - log_z);
    };
    TokenLogprobs result;
    result.token_id = token_id;
    result.logprob = logprob_of(token_id);
    // vLLM's rank: how many tokens score at least as high as this one (1 = the most likely).
    const float token_logit = logits[static_cast<size_t>(token_id)];
    result.rank = static_cast<int>(
        std::count_if(logits.begin(), logits.end(), [&](float logit) { return logit >= token_logit; }));
    const size_t count = std::min(static_cast<size_t>(std::max(num_top, 0)), logits.size());
    if (count > 0) {
        std::vector<int32_t> ids(logits.size());
        std::iota(ids.begin(), ids.end(), 0);
        std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(count), ids.end(),
                          [&](int32_t a, int32_t b) {
                              return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)] ||
                                     (logits[static_cast<size_t>(a)] == logits[static_cast<size_t>(b)] && a < b);
                          });
        for (size_t rank = 0; rank < count; ++rank)
            result.top.push_back({ids[rank], logprob_of(ids[rank])});
    }
    return result;
}

SampleResult sample_token(std::span<const float> logits, const SampleContext& context) {
    const SamplingParams& params = *context.params;
    const bool masks_min_tokens =
        static_cast<int>(context.output_ids.size()) < params.min_tokens && !context.min_tokens_masked_ids.empty();
    const bool changes_logits = masks_min_tokens || !params.logit_bias.empty() || params.repetition_penalty != 1.0 ||
                                params.frequency_penalty != 0.0 || params.presence_penalty != 0.0;
    // NOTE: most requests change nothing: then the row is read in place (a 163,840-float copy per row and step
    // was a measurable part of the engine's host time on the GPU).
    std::vector<float> copy;  // [vocab_size] when the logits change
    std::span<const float> processed = logits;
    if (changes_logits) {
        copy.assign(logits.begin(), logits.end());
        if (masks_min_tokens) {
            for (const int32_t id : context.min_tokens_masked_ids) {
                if (id >= 0 && static_cast<size_t>(id) < copy.size())
                    copy[static_cast<size_t>(id)] = kMasked;
            }
        }
        apply_logit_bias(copy, params);
        apply_penalties(copy, params, context.prompt_ids, context.output_ids);
        processed = copy;
    }

    SampleResult result;
    if (params.temperature < kGreedyTemperature) {
        result.token_id = greedy_token(processed);
    } else {
        K2_CHECK(context.rng != nullptr, "a sampled request needs a generator");
        result.token_id = draw_sampled(processed, params, draw_uniform(*context.rng));
    }
    if (params.logprobs.has_value())
        result.logprobs = compute_logprobs(logits, result.token_id, *params.logprobs);
    return result;
}

}  // namespace k2

// Sampler: empirical distributions against analytically computed ones (chi-square with fixed seeds, so
// the test is deterministic), penalties, greedy, logprobs, seeded reproducibility.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "engine/sampler.h"

namespace k2 {
namespace {

const std::vector<float> kLogits = {2.0f, 1.5f, 1.0f, 0.5f, 0.0f, -0.5f, -1.0f, -3.0f};

// exp(l / t) normalized, computed independently of the sampler.
std::vector<double> softmax_ref(const std::vector<float>& logits, double temperature) {
    std::vector<double> p;
    for (const float l : logits) p.push_back(std::exp(l / temperature));
    const double sum = std::accumulate(p.begin(), p.end(), 0.0);
    for (double& x : p) x /= sum;
    return p;
}

std::vector<double> keep_only(std::vector<double> p, const std::vector<bool>& keep) {
    for (size_t i = 0; i < p.size(); ++i) {
        if (!keep[i]) p[i] = 0.0;
    }
    const double sum = std::accumulate(p.begin(), p.end(), 0.0);
    for (double& x : p) x /= sum;
    return p;
}

// Draws `num_draws` tokens through sample_token and returns the chi-square statistic against `expected`;
// tokens with expected probability 0 must never be drawn.
double chi_square(const std::vector<float>& logits, const SamplingParams& params, const std::vector<double>& expected,
                  int* degrees_of_freedom, std::span<const int32_t> prompt = {}, std::span<const int32_t> output = {}) {
    constexpr int kNumDraws = 20000;
    std::mt19937_64 rng(1234);
    std::vector<int> counts(logits.size(), 0);
    SampleContext context;
    context.params = &params;
    context.prompt_ids = prompt;
    context.output_ids = output;
    context.rng = &rng;
    for (int i = 0; i < kNumDraws; ++i) ++counts[static_cast<size_t>(sample_token(logits, context).token_id)];
    double stat = 0.0;
    int nonzero = 0;
    for (size_t i = 0; i < logits.size(); ++i) {
        if (expected[i] == 0.0) {
            EXPECT_EQ(counts[i], 0) << "token " << i << " should be masked";
            continue;
        }
        ++nonzero;
        const double e = expected[i] * kNumDraws;
        stat += (counts[i] - e) * (counts[i] - e) / e;
    }
    *degrees_of_freedom = nonzero - 1;
    return stat;
}

// Chi-square critical value at p = 0.001 (Wilson-Hilferty approximation).
double critical_value(int dof) {
    const double k = dof;
    const double z = 3.090;
    return k * std::pow(1.0 - 2.0 / (9.0 * k) + z * std::sqrt(2.0 / (9.0 * k)), 3.0);
}

void expect_distribution(const SamplingParams& params, const std::vector<double>& expected,
                         const std::vector<float>& logits = kLogits, std::span<const int32_t> prompt = {},
                         std::span<const int32_t> output = {}) {
    int dof = 0;
    const double stat = chi_square(logits, params, expected, &dof, prompt, output);
    ASSERT_GE(dof, 1);
    EXPECT_LT(stat, critical_value(dof)) << "chi-square " << stat << " with " << dof << " degrees of freedom";
}

TEST(Sampler, TemperatureMatchesSoftmax) {
    for (const double temperature : {1.0, 0.5, 2.0}) {
        SamplingParams params;
        params.temperature = temperature;
        expect_distribution(params, softmax_ref(kLogits, temperature));
    }
}

TEST(Sampler, ChiSquareDetectsAWrongDistribution) {
    // The test must be able to fail: temperature 0.5 draws are far from the T = 1 distribution.
    SamplingParams params;
    params.temperature = 0.5;
    int dof = 0;
    const double stat = chi_square(kLogits, params, softmax_ref(kLogits, 1.0), &dof);
    EXPECT_GT(stat, critical_value(dof));
}

TEST(Sampler, TopKKeepsTheKMostLikely) {
    SamplingParams params;
    params.top_k = 3;
    expect_distribution(params, keep_only(softmax_ref(kLogits, 1.0), {true, true, true, false, false, false, false, false}));
}

TEST(Sampler, TopPKeepsTheSmallestNucleus) {
    // p = [0.374, 0.227, 0.138, 0.083, 0.051, 0.031, 0.019, 0.003]: 0.374 + 0.227 + 0.138 = 0.739 < 0.8,
    // so the nucleus for top_p 0.8 has four tokens.
    SamplingParams params;
    params.top_p = 0.8;
    const auto p = softmax_ref(kLogits, 1.0);
    std::vector<bool> keep(p.size(), false);
    double cumulative = 0.0;
    for (size_t i = 0; i < p.size() && cumulative < 0.8; ++i) {  // kLogits is sorted, most likely first
        keep[i] = true;
        cumulative += p[i];
    }
    EXPECT_EQ(std::count(keep.begin(), keep.end(), true), 4);
    expect_distribution(params, keep_only(p, keep));
}

TEST(Sampler, TopPOnALargeVocabMatchesAFullSort) {
    // A flat-ish distribution over 5,000 tokens: the nucleus holds thousands of tokens.
    std::mt19937 rng(3);
    std::normal_distribution<float> normal(0.0f, 0.5f);
    std::vector<float> logits(5000);
    for (float& l : logits) l = normal(rng);
    for (const double top_p : {0.05, 0.5, 0.9, 0.999}) {
        SamplingParams params;
        params.top_p = top_p;
        const auto dist = sampling_distribution(logits, params);
        const auto p = softmax_ref(logits, 1.0);
        std::vector<size_t> order(p.size());
        std::iota(order.begin(), order.end(), 0);
        std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
        std::vector<bool> keep(p.size(), false);
        double higher = 0.0;
        for (const size_t id : order) {
            if (higher >= top_p) break;
            keep[id] = true;
            higher += p[id];
        }
        const auto expected = keep_only(p, keep);
        for (size_t i = 0; i < p.size(); ++i) ASSERT_NEAR(dist[i], expected[i], 1e-9) << "top_p " << top_p << " token " << i;
    }
}

TEST(Sampler, MinPDropsTokensBelowAFractionOfTheMax) {
    SamplingParams params;
    params.min_p = 0.2;
    const auto p = softmax_ref(kLogits, 1.0);
    std::vector<bool> keep;
    for (const double x : p) keep.push_back(x >= 0.2 * p[0]);
    EXPECT_EQ(std::count(keep.begin(), keep.end(), true), 4);
    expect_distribution(params, keep_only(p, keep));
}

TEST(Sampler, TemperatureThenTopKThenTopP) {
    SamplingParams params;
    params.temperature = 0.8;
    params.top_k = 5;
    params.top_p = 0.9;
    auto p = keep_only(softmax_ref(kLogits, 0.8), {true, true, true, true, true, false, false, false});
    std::vector<bool> keep(p.size(), false);
    double cumulative = 0.0;
    for (size_t i = 0; i < p.size() && cumulative < 0.9; ++i) {
        keep[i] = true;
        cumulative += p[i];
    }
    expect_distribution(params, keep_only(p, keep));
}

TEST(Sampler, PenaltiesFollowVllm) {
    SamplingParams params;
    params.repetition_penalty = 1.5;
    params.frequency_penalty = 0.5;
    params.presence_penalty = 0.3;
    const std::vector<int32_t> prompt = {0, 6};
    const std::vector<int32_t> output = {1, 1, 3};
    // Repetition on prompt + output tokens {0, 1, 3, 6}: positive logits / 1.5, negative x 1.5;
    // then output counts: 1 -> -(2 x 0.5 + 0.3), 3 -> -(0.5 + 0.3).
    std::vector<float> expected = kLogits;
    expected[0] = 2.0f / 1.5f;
    expected[1] = 1.5f / 1.5f - 1.3f;
    expected[3] = 0.5f / 1.5f - 0.8f;
    expected[6] = -1.0f * 1.5f;
    std::vector<float> penalized = kLogits;
    apply_penalties(penalized, params, prompt, output);
    for (size_t i = 0; i < kLogits.size(); ++i) EXPECT_NEAR(penalized[i], expected[i], 1e-6) << "token " << i;
    expect_distribution(params, softmax_ref(expected, 1.0), kLogits, prompt, output);
}

TEST(Sampler, GreedyTakesTheArgmaxAfterPenalties) {
    SamplingParams params;
    params.temperature = 0.0;
    SampleContext context;
    context.params = &params;
    EXPECT_EQ(sample_token(kLogits, context).token_id, 0);
    params.repetition_penalty = 2.0;
    const std::vector<int32_t> prompt = {0};
    context.prompt_ids = prompt;
    EXPECT_EQ(sample_token(kLogits, context).token_id, 1);  // 2.0 / 2 = 1.0 < 1.5
}

TEST(Sampler, MinTokensMasksStopIds) {
    SamplingParams params;
    params.temperature = 0.0;
    params.min_tokens = 2;
    const std::vector<int32_t> masked = {0};
    const std::vector<int32_t> one_output = {5};
    const std::vector<int32_t> two_outputs = {5, 5};
    SampleContext context;
    context.params = &params;
    context.min_tokens_masked_ids = masked;
    context.output_ids = one_output;
    EXPECT_EQ(sample_token(kLogits, context).token_id, 1);
    context.output_ids = two_outputs;
    EXPECT_EQ(sample_token(kLogits, context).token_id, 0);
}

TEST(Sampler, SeededDrawsReproduce) {
    SamplingParams params;
    auto draw_sequence = [&](uint64_t seed) {
        std::mt19937_64 rng(seed);
        SampleContext context;
        context.params = &params;
        context.rng = &rng;
        std::vector<int32_t> tokens;
        for (int i = 0; i < 64; ++i) tokens.push_back(sample_token(kLogits, context).token_id);
        return tokens;
    };
    EXPECT_EQ(draw_sequence(7), draw_sequence(7));
    EXPECT_NE(draw_sequence(7), draw_sequence(8));
}

TEST(Sampler, LogprobsAreRawLogSoftmax) {
    SamplingParams params;
    params.temperature = 0.5;  // logprobs ignore temperature and penalties ("raw" mode)
    params.repetition_penalty = 3.0;
    params.logprobs = 3;
    std::mt19937_64 rng(1);
    SampleContext context;
    context.params = &params;
    context.rng = &rng;
    const std::vector<int32_t> prompt = {0, 1};
    context.prompt_ids = prompt;
    const SampleResult result = sample_token(kLogits, context);
    ASSERT_TRUE(result.logprobs.has_value());
    const auto p = softmax_ref(kLogits, 1.0);
    EXPECT_EQ(result.logprobs->token_id, result.token_id);
    EXPECT_NEAR(result.logprobs->logprob, std::log(p[static_cast<size_t>(result.token_id)]), 1e-5);
    ASSERT_EQ(result.logprobs->top.size(), 3u);
    for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(result.logprobs->top[static_cast<size_t>(i)].token_id, i);
        EXPECT_NEAR(result.logprobs->top[static_cast<size_t>(i)].logprob, std::log(p[static_cast<size_t>(i)]), 1e-5);
    }
}

TEST(Sampler, LogitBiasSteersGreedy) {
    SamplingParams params;
    params.temperature = 0.0;
    SampleContext context;
    context.params = &params;
    params.logit_bias = {{7, 100.0f}};  // the least likely token (-3.0) becomes the argmax
    EXPECT_EQ(sample_token(kLogits, context).token_id, 7);
    params.logit_bias = {{0, -100.0f}};  // -100 bans the argmax: the next one wins
    EXPECT_EQ(sample_token(kLogits, context).token_id, 1);
    params.logit_bias = {{0, -100.0f}, {1, -100.0f}, {99, 100.0f}};  // ids outside the row are ignored
    EXPECT_EQ(sample_token(kLogits, context).token_id, 2);
}

TEST(Sampler, LogitBiasShiftsTheDistributionBeforeTemperature) {
    // vLLM adds the bias to the logits, then divides by the temperature: softmax((l + b) / t).
    SamplingParams params;
    params.temperature = 0.5;
    params.logit_bias = {{3, 1.25f}, {0, -1.0f}};
    std::vector<float> biased = kLogits;
    biased[3] += 1.25f;
    biased[0] -= 1.0f;
    expect_distribution(params, softmax_ref(biased, 0.5));
}

TEST(Sampler, LogitBiasComesBeforeTheRepetitionPenalty) {
    // Token 1: logit 1.5, bias -2.5 -> -1.0; the penalty multiplies a negative logit: -1.0 * 2 = -2.0.
    // Penalty first would give 1.5 / 2 - 2.5 = -1.75. Token 6 (logit -1.0, not seen) sits between the two.
    SamplingParams params;
    params.temperature = 0.0;
    params.repetition_penalty = 2.0;
    params.logit_bias = {{0, -100.0f}, {2, -100.0f}, {3, -100.0f}, {4, -100.0f}, {5, -100.0f}, {1, -2.5f},
                         {6, -0.875f}};
    const std::vector<int32_t> prompt = {1};
    SampleContext context;
    context.params = &params;
    context.prompt_ids = prompt;
    EXPECT_EQ(sample_token(kLogits, context).token_id, 6);  // -1.875 > -2.0 (penalty first would pick 1)
}

TEST(Sampler, LogprobsIgnoreTheBiasAndReportTheRank) {
    SamplingParams params;
    params.temperature = 0.0;
    params.logprobs = 0;
    params.logit_bias = {{5, 100.0f}};
    SampleContext context;
    context.params = &params;
    const SampleResult result = sample_token(kLogits, context);
    ASSERT_EQ(result.token_id, 5);
    ASSERT_TRUE(result.logprobs.has_value());
    EXPECT_NEAR(result.logprobs->logprob, std::log(softmax_ref(kLogits, 1.0)[5]), 1e-5);  // raw logits
    EXPECT_EQ(result.logprobs->rank, 6);
    EXPECT_EQ(compute_logprobs(kLogits, 0, 2).rank, 1);
    const std::vector<float> tied = {1.0f, 3.0f, 3.0f, 0.0f};
    EXPECT_EQ(compute_logprobs(tied, 2, 0).rank, 2);  // vLLM counts the tokens scoring >= this one
    EXPECT_EQ(compute_logprobs(tied, 3, 0).rank, 4);
}

}  // namespace
}  // namespace k2

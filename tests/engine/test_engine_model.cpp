// Engine over the real tiny-kimi-k2 checkpoint on the CPU. Acceptance 1: the greedy continuation of
// every golden prompt equals the fixture's greedy_12 (transformers, full recompute) whether it runs alone,
// among 16 concurrent mixed requests, with 16-token chunked prefill, or under forced preemption.
// Acceptance 2: a request sharing a 192-token prefix computes only its new tokens and matches the
// uncached run's tokens and logprobs.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "../unit/test_paths.h"
#include "engine/engine.h"
#include "engine_test_util.h"
#include "model/model.h"

namespace k2 {
namespace {

using testing::collect;
using testing::make_request;
using testing::run_to_completion;

struct GoldenPrompt {
    std::vector<int32_t> ids;
    std::vector<int32_t> greedy_12;
};

std::vector<GoldenPrompt> load_goldens() {
    std::ifstream file(fixture_path("tiny-kimi-k2") / "golden.json");
    const auto golden = nlohmann::json::parse(file);
    std::vector<GoldenPrompt> prompts;
    for (const auto& prompt : golden.at("prompts")) {
        prompts.push_back({prompt.at("ids").get<std::vector<int32_t>>(), prompt.at("greedy_12").get<std::vector<int32_t>>()});
    }
    return prompts;
}

std::unique_ptr<Engine> tiny_engine(EngineConfig config) {
    if (config.num_kv_blocks == 0) config.num_kv_blocks = 32;  // 2,048 tokens: plenty, and quick to allocate
    return std::make_unique<Engine>(config, load_model(fixture_path("tiny-kimi-k2"), ModelOptions{}), nullptr);
}

// Submits every golden prompt (greedy, 12 tokens) plus `num_noise` sampled requests (prompts of
// `noise_len` tokens, random when 0); returns the goldens' outputs.
std::vector<std::vector<int32_t>> run_goldens(Engine& engine, const std::vector<GoldenPrompt>& goldens, int num_noise,
                                              int noise_len = 0) {
    std::mt19937 rng(5);
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (size_t i = 0; i < goldens.size(); ++i) {
        streams.push_back(engine.submit(make_request("g" + std::to_string(i), goldens[i].ids, 12)));
    }
    for (int j = 0; j < num_noise; ++j) {
        std::vector<int32_t> prompt;
        const int length = noise_len > 0 ? noise_len : 1 + static_cast<int>(rng() % 40);
        for (int k = 0; k < length; ++k) prompt.push_back(static_cast<int32_t>(rng() % 3840));
        EngineRequest noise = make_request("noise" + std::to_string(j), prompt, 1 + static_cast<int>(rng() % 8));
        noise.params.temperature = 0.8;
        noise.params.seed = j;
        engine.submit(std::move(noise));
    }
    run_to_completion(engine);
    std::vector<std::vector<int32_t>> outputs;
    for (const auto& stream : streams) outputs.push_back(collect(*stream)[0].token_ids);
    return outputs;
}

class EngineTinyModel : public ::testing::Test {
protected:
    static void SetUpTestSuite() { s_goldens = load_goldens(); }
    static std::vector<std::vector<int32_t>> expected() {
        std::vector<std::vector<int32_t>> out;
        for (const auto& g : s_goldens) out.push_back(g.greedy_12);
        return out;
    }
    static inline std::vector<GoldenPrompt> s_goldens;
};

TEST_F(EngineTinyModel, GreedyAloneMatchesGolden) {
    auto engine = tiny_engine({});
    for (size_t i = 0; i < s_goldens.size(); ++i) {
        EXPECT_EQ(run_goldens(*engine, {s_goldens[i]}, 0)[0], s_goldens[i].greedy_12) << "prompt " << i;
    }
}

TEST_F(EngineTinyModel, GreedyAmongConcurrentRequestsMatchesGolden) {
    auto engine = tiny_engine({});
    EXPECT_EQ(run_goldens(*engine, s_goldens, 11), expected());  // 16 concurrent requests
}

TEST_F(EngineTinyModel, GreedyWithChunkedPrefillMatchesGolden) {
    auto engine = tiny_engine({.max_num_batched_tokens = 16});
    EXPECT_EQ(run_goldens(*engine, s_goldens, 11), expected());
}

TEST_F(EngineTinyModel, GreedyUnderPreemptionMatchesGolden) {
    // 6 blocks (384 tokens) cannot hold the 16 requests at once (the 200-token prompt alone needs 4), and
    // 62-token noise prompts need a second block two tokens into their decode, when none is free.
    auto engine = tiny_engine({.max_model_len = 384, .num_kv_blocks = 6});
    EXPECT_EQ(run_goldens(*engine, s_goldens, 11, 62), expected());
    const EngineStats stats = engine->stats();
    EXPECT_GT(stats.preemptions, 0u);
    EXPECT_EQ(stats.num_free_blocks, stats.num_total_blocks);
}

TEST_F(EngineTinyModel, PrefixCacheHitComputesOnlyNewTokensWithSameLogprobs) {
    const auto& long_prompt = s_goldens[3].ids;  // 200 tokens
    ASSERT_EQ(long_prompt.size(), 200u);
    std::vector<int32_t> second(long_prompt.begin(), long_prompt.begin() + 192);
    for (const int32_t t : {11, 222, 3333, 44, 555, 66, 777}) second.push_back(t);

    auto run = [&](bool caching, uint64_t* computed, uint64_t* hits) {
        auto engine = tiny_engine({.enable_prefix_caching = caching});
        engine->submit(make_request("first", long_prompt, 2));
        run_to_completion(*engine);
        const EngineStats before = engine->stats();
        auto request = make_request("second", second, 6);
        request.params.logprobs = 4;
        auto stream = engine->submit(request);
        run_to_completion(*engine);
        const EngineStats after = engine->stats();
        *computed = after.computed_tokens - before.computed_tokens;
        *hits = after.prefix_cache_hits - before.prefix_cache_hits;
        return collect(*stream)[0];
    };
    uint64_t computed_cached = 0, hits_cached = 0, computed_uncached = 0, hits_uncached = 0;
    const auto cached = run(true, &computed_cached, &hits_cached);
    const auto uncached = run(false, &computed_uncached, &hits_uncached);
    EXPECT_EQ(hits_cached, 192u);
    EXPECT_EQ(computed_cached, 7u + 5u);  // 7 new prompt tokens, then 5 decode steps
    EXPECT_EQ(computed_uncached, 199u + 5u);
    EXPECT_EQ(hits_uncached, 0u);
    EXPECT_EQ(cached.num_cached_tokens, 192);
    EXPECT_EQ(cached.token_ids, uncached.token_ids);
    ASSERT_EQ(cached.logprobs.size(), uncached.logprobs.size());
    for (size_t i = 0; i < cached.logprobs.size(); ++i) {
        EXPECT_NEAR(cached.logprobs[i].logprob, uncached.logprobs[i].logprob, 1e-4) << "token " << i;
        ASSERT_EQ(cached.logprobs[i].top.size(), 4u);
        for (size_t k = 0; k < 4; ++k) {
            EXPECT_EQ(cached.logprobs[i].top[k].token_id, uncached.logprobs[i].top[k].token_id);
            EXPECT_NEAR(cached.logprobs[i].top[k].logprob, uncached.logprobs[i].top[k].logprob, 1e-4);
        }
    }
}

}  // namespace
}  // namespace k2

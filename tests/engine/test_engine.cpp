// Engine with the FakeModel: batch invariance against a full-recompute reference, prefix caching,
// preemption, no leaks under random load, validation errors, n > 1, stop handling, the loop thread.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <random>
#include <thread>

#include "engine/engine.h"
#include "engine_test_util.h"
#include "fake_model.h"

namespace k2 {
namespace {

using testing::FakeModel;
using testing::FakeModelLog;
using testing::collect;
using testing::make_request;
using testing::reference_greedy;
using testing::reference_logits;
using testing::run_to_completion;

constexpr int kVocab = 256;

std::vector<int32_t> random_tokens(std::mt19937& rng, int count) {
    std::vector<int32_t> tokens;
    for (int i = 0; i < count; ++i) tokens.push_back(static_cast<int32_t>(rng() % (kVocab - 1)));
    return tokens;
}

std::unique_ptr<Engine> make_engine(EngineConfig config, std::shared_ptr<FakeModelLog> log = nullptr,
                                    int64_t max_positions = 4096) {
    if (log == nullptr) log = std::make_shared<FakeModelLog>();
    if (config.num_kv_blocks == 0) config.num_kv_blocks = 256;
    return std::make_unique<Engine>(config, std::make_unique<FakeModel>(kVocab, max_positions, log), nullptr);
}

std::vector<std::vector<int32_t>> golden_like_prompts() {
    std::mt19937 rng(42);
    std::vector<std::vector<int32_t>> prompts;
    for (const int length : {1, 5, 33, 200, 11, 64, 128, 65}) prompts.push_back(random_tokens(rng, length));
    return prompts;
}

// Runs every prompt greedily for 12 tokens among `noise` other concurrent sampled requests.
std::vector<std::vector<int32_t>> run_greedy(Engine& engine, const std::vector<std::vector<int32_t>>& prompts,
                                             int num_noise) {
    std::mt19937 rng(7);
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (size_t i = 0; i < prompts.size(); ++i) {
        streams.push_back(engine.submit(make_request("p" + std::to_string(i), prompts[i], 12)));
        for (int j = 0; j < num_noise / static_cast<int>(prompts.size()) + 1; ++j) {
            EngineRequest noise = make_request(fmt::format("noise{}_{}", i, j), random_tokens(rng, 1 + rng() % 150),
                                               1 + static_cast<int>(rng() % 30));
            noise.params.temperature = 0.9;
            noise.params.top_k = 20;
            engine.submit(std::move(noise));
        }
    }
    run_to_completion(engine);
    std::vector<std::vector<int32_t>> outputs;
    for (const auto& stream : streams) {
        auto results = collect(*stream);
        EXPECT_EQ(results[0].num_finished, 1);
        EXPECT_EQ(results[0].finish_reason, "length");
        outputs.push_back(results[0].token_ids);
    }
    return outputs;
}

TEST(Engine, GreedyIsBatchInvariantAndMatchesFullRecompute) {
    const auto prompts = golden_like_prompts();
    std::vector<std::vector<int32_t>> expected;
    for (const auto& prompt : prompts) expected.push_back(reference_greedy(prompt, 12, kVocab));

    for (size_t i = 0; i < prompts.size(); ++i) {  // alone
        auto engine = make_engine({});
        EXPECT_EQ(run_greedy(*engine, {prompts[i]}, 0)[0], expected[i]) << "alone, prompt " << i;
    }
    {
        auto engine = make_engine({});
        EXPECT_EQ(run_greedy(*engine, prompts, 16), expected) << "among concurrent requests";
    }
    {
        auto log = std::make_shared<FakeModelLog>();
        auto engine = make_engine({.max_num_batched_tokens = 16}, log);
        EXPECT_EQ(run_greedy(*engine, prompts, 16), expected) << "chunked prefill";
        EXPECT_LE(log->max_tokens_per_forward, 16);
    }
    {
        // 8 blocks (512 tokens) for ~24 requests of up to 212 tokens: preemption is unavoidable.
        auto engine = make_engine({.max_model_len = 512, .num_kv_blocks = 8});
        EXPECT_EQ(run_greedy(*engine, prompts, 16), expected) << "under preemption";
        EXPECT_GT(engine->stats().preemptions, 0u);
        EXPECT_EQ(engine->stats().num_free_blocks, 8);
    }
}

TEST(Engine, PrefixCachingComputesOnlyNewTokensWithSameResults) {
    std::mt19937 rng(3);
    const auto shared = random_tokens(rng, 192);
    auto first = shared;
    auto second = shared;
    for (const int32_t t : random_tokens(rng, 20)) first.push_back(t);
    for (const int32_t t : random_tokens(rng, 9)) second.push_back(t);

    auto run_pair = [&](bool caching, EngineStats* stats_before, EngineStats* stats_after) {
        auto engine = make_engine({.enable_prefix_caching = caching});
        auto request = make_request("a", first, 4);
        engine->submit(request);
        run_to_completion(*engine);
        *stats_before = engine->stats();
        request = make_request("b", second, 5);
        request.params.logprobs = 5;
        auto stream = engine->submit(request);
        run_to_completion(*engine);
        *stats_after = engine->stats();
        return collect(*stream)[0];
    };
    EngineStats before, after, before_nc, after_nc;
    const auto cached = run_pair(true, &before, &after);
    const auto uncached = run_pair(false, &before_nc, &after_nc);
    // The second request computes its 9 new prompt tokens and 4 decode tokens; 192 come from the cache.
    EXPECT_EQ(after.computed_tokens - before.computed_tokens, 9u + 4u);
    EXPECT_EQ(after.prefix_cache_hits - before.prefix_cache_hits, 192u);
    EXPECT_EQ(after.prefix_cache_queries - before.prefix_cache_queries, 201u);
    EXPECT_EQ(cached.num_cached_tokens, 192);
    EXPECT_EQ(after_nc.computed_tokens - before_nc.computed_tokens, 201u + 4u);
    EXPECT_EQ(uncached.num_cached_tokens, 0);
    EXPECT_EQ(cached.token_ids, uncached.token_ids);
    EXPECT_EQ(cached.token_ids, reference_greedy(second, 5, kVocab));
    ASSERT_EQ(cached.logprobs.size(), uncached.logprobs.size());
    for (size_t i = 0; i < cached.logprobs.size(); ++i) {
        EXPECT_EQ(cached.logprobs[i].logprob, uncached.logprobs[i].logprob);
        ASSERT_EQ(cached.logprobs[i].top.size(), 5u);
        for (size_t k = 0; k < 5; ++k) {
            EXPECT_EQ(cached.logprobs[i].top[k].token_id, uncached.logprobs[i].top[k].token_id);
            EXPECT_EQ(cached.logprobs[i].top[k].logprob, uncached.logprobs[i].top[k].logprob);
        }
    }
}

TEST(Engine, FullPromptHitRecomputesTheLastToken) {
    std::mt19937 rng(5);
    const auto prompt = random_tokens(rng, 128);
    auto engine = make_engine({});
    engine->submit(make_request("a", prompt, 3));
    run_to_completion(*engine);
    const auto before = engine->stats();
    auto stream = engine->submit(make_request("b", prompt, 3));
    run_to_completion(*engine);
    const auto after = engine->stats();
    EXPECT_EQ(after.prefix_cache_hits - before.prefix_cache_hits, 64u);  // 127 cacheable tokens: one block
    EXPECT_EQ(collect(*stream)[0].token_ids, reference_greedy(prompt, 3, kVocab));
}

// Acceptance 3: 1,000 random requests with random aborts and preemptions leave every block free.
TEST(Engine, NoLeaksAfterRandomLoad) {
    auto log = std::make_shared<FakeModelLog>();
    auto engine = make_engine({.max_num_seqs = 24, .max_num_batched_tokens = 96, .max_model_len = 320,
                               .num_kv_blocks = 12},
                              log);
    std::mt19937 rng(11);
    std::vector<std::vector<int32_t>> prefixes;
    for (int i = 0; i < 4; ++i) prefixes.push_back(random_tokens(rng, 64 + static_cast<int>(rng() % 100)));
    std::vector<std::pair<std::string, std::shared_ptr<RequestStream>>> streams;
    std::vector<int> num_seqs;
    int submitted = 0;
    while (submitted < 1000 || engine->has_unfinished_requests()) {
        for (int burst = static_cast<int>(rng() % 4); burst > 0 && submitted < 1000; --burst, ++submitted) {
            std::vector<int32_t> prompt;
            if (rng() % 2 == 0) prompt = prefixes[rng() % prefixes.size()];
            for (const int32_t t : random_tokens(rng, 1 + static_cast<int>(rng() % 60))) prompt.push_back(t);
            EngineRequest request = make_request(std::to_string(submitted), prompt, 1 + static_cast<int>(rng() % 24));
            request.params.temperature = (rng() % 3 == 0) ? 0.0 : 1.0;
            request.params.n = 1 + static_cast<int>(rng() % 2);
            request.params.ignore_eos = rng() % 2 == 0;
            if (rng() % 4 == 0) request.params.stop_token_ids = {static_cast<int32_t>(rng() % kVocab)};
            if (rng() % 5 == 0) request.params.prompt_logprobs = 2;
            if (rng() % 5 == 0) request.params.logprobs = 3;
            streams.emplace_back(request.request_id, engine->submit(request));
            num_seqs.push_back(request.params.n);
        }
        if (!streams.empty() && rng() % 6 == 0) engine->abort(streams[rng() % streams.size()].first);
        engine->step();
    }
    const EngineStats stats = engine->stats();
    EXPECT_EQ(stats.num_free_blocks, stats.num_total_blocks);
    EXPECT_EQ(stats.num_running, 0);
    EXPECT_EQ(stats.num_waiting, 0);
    EXPECT_GT(stats.preemptions, 0u);
    EXPECT_GT(stats.prefix_cache_hits, 0u);
    EXPECT_GT(stats.requests_finished_by_reason.at("abort"), 0u);
    EXPECT_EQ(stats.requests_finished_by_reason.count("error"), 0u);
    EXPECT_LE(log->max_tokens_per_forward, 96);
    EXPECT_LE(log->max_seqs_per_forward, 24);
    for (size_t i = 0; i < streams.size(); ++i) {
        EXPECT_TRUE(streams[i].second->all_finished());
        const auto results = collect(*streams[i].second);
        ASSERT_EQ(static_cast<int>(results.size()), num_seqs[i]) << "request " << i;
        for (const auto& [index, result] : results) EXPECT_EQ(result.num_finished, 1) << "request " << i;
    }
}

TEST(Engine, ValidationErrorsCarryVllmMessages) {
    auto engine = make_engine({.max_model_len = 100, .max_waiting = 2});
    auto expect_error = [&](EngineRequest request, const std::string& message) {
        try {
            engine->submit(std::move(request));
            ADD_FAILURE() << "no error for: " << message;
        } catch (const Error& error) {
            EXPECT_EQ(error.message(), message);
        }
    };
    expect_error(make_request("a", std::vector<int32_t>(100, 1), 1),
                 "This model's maximum context length is 100 tokens. However, your request has 100 input tokens. "
                 "Please reduce the length of the input messages.");
    expect_error(make_request("a", std::vector<int32_t>(90, 1), 20),
                 "'max_tokens' or 'max_completion_tokens' is too large: 20. This model's maximum context length is "
                 "100 tokens and your request has 90 input tokens (20 > 100 - 90).");
    auto logprobs = make_request("a", {1, 2}, 5);
    logprobs.params.logprobs = 21;
    expect_error(logprobs, "Requested sample logprobs of 21, which is greater than max allowed: 20");
    auto stop = make_request("a", {1, 2}, 5);
    stop.params.stop = {"x"};
    expect_error(stop, "stop strings need a tokenizer, and this engine has none.");
    expect_error(make_request("a", {}, 5), "The prompt must contain at least one token.");

    engine->submit(make_request("w1", {1}, 1));
    engine->submit(make_request("w2", {1}, 1));
    EXPECT_THROW(engine->submit(make_request("w3", {1}, 1)), EngineOverloadedError);
    run_to_completion(*engine);
    EXPECT_NO_THROW(engine->submit(make_request("w4", {1}, 1)));
}

TEST(Engine, MaxTokensDefaultsToTheRestOfTheContext) {
    auto engine = make_engine({.max_model_len = 70});
    auto stream = engine->submit(make_request("a", std::vector<int32_t>(60, 3), 0));
    run_to_completion(*engine);
    const auto result = collect(*stream)[0];
    EXPECT_EQ(result.token_ids.size(), 10u);
    EXPECT_EQ(result.finish_reason, "length");
}

TEST(Engine, StopTokenIdsEosAndMinTokens) {
    std::mt19937 rng(9);
    const auto prompt = random_tokens(rng, 10);
    const auto greedy = reference_greedy(prompt, 8, kVocab);
    auto engine = make_engine({});
    auto request = make_request("a", prompt, 8);
    request.params.stop_token_ids = {greedy[3]};
    auto stream = engine->submit(request);
    // min_tokens beyond the stop token: the stop id is masked until then, so the output diverges.
    request.request_id = "b";
    request.params.min_tokens = 5;
    auto masked_stream = engine->submit(request);
    run_to_completion(*engine);
    const auto result = collect(*stream)[0];
    EXPECT_EQ(result.token_ids, std::vector<int32_t>(greedy.begin(), greedy.begin() + 4));
    EXPECT_EQ(result.finish_reason, "stop");
    EXPECT_EQ(std::get<int32_t>(result.stop_reason), greedy[3]);
    const auto masked = collect(*masked_stream)[0];
    EXPECT_GE(masked.token_ids.size(), 5u);
    EXPECT_EQ(std::count(masked.token_ids.begin(), masked.token_ids.begin() + 4, greedy[3]), 0);
}

TEST(Engine, NChildrenCarryIndicesAndSeedsReproduce) {
    std::mt19937 rng(1);
    const auto prompt = random_tokens(rng, 20);
    auto run = [&](std::optional<int64_t> seed, uint64_t engine_seed) {
        auto engine = make_engine({.seed = engine_seed});
        auto request = make_request("a", prompt, 16);
        request.params.temperature = 1.0;
        request.params.n = 3;
        request.params.seed = seed;
        auto stream = engine->submit(request);
        run_to_completion(*engine);
        EXPECT_TRUE(stream->all_finished());
        return collect(*stream);
    };
    const auto a = run(1234, 0);
    const auto b = run(1234, 99);
    ASSERT_EQ(a.size(), 3u);
    for (int index = 0; index < 3; ++index) {
        EXPECT_EQ(a.at(index).token_ids, b.at(index).token_ids) << "seeded child " << index;
        EXPECT_EQ(a.at(index).token_ids.size(), 16u);
    }
    EXPECT_NE(a.at(0).token_ids, a.at(1).token_ids);
    const auto c = run(std::nullopt, 5);
    const auto d = run(std::nullopt, 5);
    const auto e = run(std::nullopt, 6);
    EXPECT_EQ(c.at(0).token_ids, d.at(0).token_ids);  // the engine seed makes unseeded runs reproducible
    EXPECT_NE(c.at(0).token_ids, e.at(0).token_ids);
}

TEST(Engine, PromptLogprobsMatchTheReference) {
    std::mt19937 rng(2);
    const auto prompt = random_tokens(rng, 40);
    auto engine = make_engine({.max_num_batched_tokens = 16});  // chunked: rows come from three steps
    auto request = make_request("a", prompt, 2);
    request.params.prompt_logprobs = 2;
    auto stream = engine->submit(request);
    run_to_completion(*engine);
    const auto result = collect(*stream)[0];
    ASSERT_EQ(result.prompt_logprobs.size(), prompt.size() - 1);
    for (size_t i = 0; i + 1 < prompt.size(); ++i) {
        const auto logits = reference_logits(std::span(prompt).first(i + 1), kVocab);
        double sum = 0.0;
        const float max_logit = *std::max_element(logits.begin(), logits.end());
        for (const float l : logits) sum += std::exp(static_cast<double>(l - max_logit));
        const double expected = logits[static_cast<size_t>(prompt[i + 1])] - max_logit - std::log(sum);
        EXPECT_EQ(result.prompt_logprobs[i].token_id, prompt[i + 1]);
        EXPECT_NEAR(result.prompt_logprobs[i].logprob, expected, 1e-5) << "prompt token " << i + 1;
        EXPECT_EQ(result.prompt_logprobs[i].top.size(), 2u);
    }
}

TEST(Engine, LoopThreadServesConcurrentClients) {
    auto engine = make_engine({.max_num_batched_tokens = 64});
    engine->start();
    EXPECT_TRUE(engine->healthy());
    const auto prompts = golden_like_prompts();
    std::vector<std::thread> clients;
    std::vector<std::vector<int32_t>> outputs(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
        clients.emplace_back([&, i] {
            auto stream = engine->submit(make_request("t" + std::to_string(i), prompts[i], 12));
            while (true) {
                for (const RequestOutput& output : stream->wait_pop(std::chrono::milliseconds(1000))) {
                    outputs[i].insert(outputs[i].end(), output.new_token_ids.begin(), output.new_token_ids.end());
                    if (output.finished) return;
                }
            }
        });
    }
    // An abort from another thread ends a long request early.
    auto long_stream = engine->submit(make_request("long", {1, 2, 3}, 3000));
    engine->abort("long");
    for (auto& client : clients) client.join();
    for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(outputs[i], reference_greedy(prompts[i], 12, kVocab));
    bool aborted = false;
    for (int tries = 0; tries < 100 && !aborted; ++tries) {
        for (const RequestOutput& output : long_stream->wait_pop(std::chrono::milliseconds(100))) {
            if (output.finished) aborted = output.finish_reason == "abort";
        }
    }
    EXPECT_TRUE(aborted);
    engine->stop(true);
    EXPECT_FALSE(engine->healthy());
    const EngineStats stats = engine->stats();
    EXPECT_EQ(stats.num_free_blocks, stats.num_total_blocks);
    EXPECT_EQ(stats.requests_finished_by_reason.at("length"), prompts.size());
    // The aborted request may or may not have produced a token before the abort arrived.
    EXPECT_GE(stats.time_to_first_token_seconds.count, prompts.size());
    EXPECT_LE(stats.time_to_first_token_seconds.count, prompts.size() + 1);
    EXPECT_EQ(stats.e2e_request_latency_seconds.count, prompts.size() + 1);
    EXPECT_EQ(static_cast<double>(stats.generation_tokens), stats.request_generation_tokens.sum);
    EXPECT_EQ(stats.request_params_n.count, prompts.size() + 1);
    EXPECT_EQ(stats.request_params_max_tokens.sum, 12.0 * prompts.size() + 3000.0);
    EXPECT_EQ(stats.request_decode_time_seconds.count, stats.time_to_first_token_seconds.count);
    EXPECT_THROW(engine->submit(make_request("late", {1}, 1)), EngineOverloadedError);
}

TEST(Engine, ConcurrentSubmitAndAbortFromManyThreads) {
    auto engine = make_engine({.max_num_seqs = 16, .max_num_batched_tokens = 128, .max_model_len = 256,
                               .num_kv_blocks = 10});
    engine->start();
    std::vector<std::thread> clients;
    std::atomic<int> num_finished{0};
    for (int client = 0; client < 4; ++client) {
        clients.emplace_back([&, client] {
            std::mt19937 rng(static_cast<uint32_t>(client));
            std::vector<std::shared_ptr<RequestStream>> streams;
            for (int i = 0; i < 40; ++i) {
                const std::string id = fmt::format("c{}_{}", client, i);
                EngineRequest request = make_request(id, random_tokens(rng, 1 + static_cast<int>(rng() % 120)),
                                                     1 + static_cast<int>(rng() % 20));
                request.params.temperature = 1.0;
                streams.push_back(engine->submit(std::move(request)));
                if (rng() % 3 == 0) engine->abort(id);
                if (rng() % 4 == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
            }
            for (const auto& stream : streams) {
                while (!stream->all_finished()) stream->wait_pop(std::chrono::milliseconds(100));
                ++num_finished;
            }
        });
    }
    for (auto& client : clients) client.join();
    EXPECT_EQ(num_finished.load(), 160);
    EXPECT_TRUE(engine->healthy());
    engine->stop(true);
    const EngineStats stats = engine->stats();
    EXPECT_EQ(stats.num_free_blocks, stats.num_total_blocks);
    EXPECT_EQ(stats.num_running + stats.num_waiting, 0);
    uint64_t total = 0;
    for (const auto& [reason, count] : stats.requests_finished_by_reason) total += count;
    EXPECT_EQ(total, 160u);
    EXPECT_EQ(stats.requests_finished_by_reason.count("error"), 0u);
}

TEST(Engine, StopWithoutDrainAbortsEverything) {
    auto engine = make_engine({.max_num_seqs = 1});
    engine->start();
    auto running = engine->submit(make_request("running", {1, 2, 3}, 3000));
    auto waiting = engine->submit(make_request("waiting", {4, 5}, 10));
    engine->stop(false);
    for (const auto& stream : {running, waiting}) {
        EXPECT_TRUE(stream->all_finished());
        EXPECT_EQ(collect(*stream)[0].finish_reason, "abort");
    }
    EXPECT_EQ(engine->stats().num_free_blocks, engine->stats().num_total_blocks);
}

TEST(Engine, PriorityPolicyServesLowerValuesFirst) {
    auto engine = make_engine({.max_num_seqs = 1, .scheduling_policy = "priority"});
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (const int priority : {3, 1, 2}) {
        auto request = make_request("p" + std::to_string(priority), {7, 8, 9}, 2);
        request.priority = priority;
        streams.push_back(engine->submit(request));
    }
    std::vector<int> finish_order;
    while (engine->has_unfinished_requests()) {
        engine->step();
        for (int i = 0; i < 3; ++i) {
            for (const RequestOutput& output : streams[static_cast<size_t>(i)]->try_pop()) {
                if (output.finished) finish_order.push_back(i);
            }
        }
    }
    EXPECT_EQ(finish_order, (std::vector<int>{1, 2, 0}));
    EXPECT_THROW(make_engine({.scheduling_policy = "lifo"}), Error);
}

TEST(Histogram, CumulativeVllmBuckets) {
    Histogram histogram(ttft_buckets());
    histogram.observe(0.001);
    histogram.observe(0.03);
    histogram.observe(5000.0);
    EXPECT_EQ(histogram.counts.front(), 1u);  // le 0.001 includes the boundary
    EXPECT_EQ(histogram.counts[4], 2u);       // le 0.04
    EXPECT_EQ(histogram.counts.back(), 2u);   // le 2560; 5000 is only in +Inf
    EXPECT_EQ(histogram.count, 3u);
    EXPECT_EQ(one_two_five_buckets(100), (std::vector<double>{1, 2, 5, 10, 20, 50, 100}));
}

}  // namespace
}  // namespace k2

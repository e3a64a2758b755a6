// --async-scheduling (EngineConfig::async_scheduling): step k+1 is scheduled with placeholder tokens while step k
// runs. Every test runs the same workload with and without it: the token sequences, logprobs, texts and finish
// reasons must be identical, and where an independent reference exists (the FakeModel's full recompute, the
// tiny-kimi-k2 fixture's transformers goldens) both must match it. Covers greedy and seeded sampling, many
// concurrent requests, n > 1, prompt logprobs, EOS, stop token ids, stop strings that end mid-stream, max_tokens,
// aborts mid-stream, preemption and prefix-cache hits, and a model whose submit() only queues the step.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <span>
#include <thread>

#include "../unit/test_paths.h"
#include "engine/batch_builder.h"
#include "engine/engine.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "engine_test_util.h"
#include "fake_model.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace k2 {
namespace {

using testing::collect;
using testing::FakeModel;
using testing::FakeModelLog;
using testing::make_request;
using testing::reference_greedy;
using testing::run_to_completion;
using testing::SeqResult;

// A model with a real submit/collect split, like the CUDA one: submit only keeps a copy of the batch and collect
// computes it, so a step that the engine did not collect before the next submit, or a batch patched after submit,
// shows up as a failed check or a wrong token.
class QueuedModel final : public Model {
public:
    explicit QueuedModel(std::unique_ptr<Model> inner) : m_inner(std::move(inner)) {}
    const ModelConfig& config() const override { return m_inner->config(); }
    size_t kv_cache_bytes_per_block() const override { return m_inner->kv_cache_bytes_per_block(); }
    void allocate_kv_cache(int num_blocks) override { m_inner->allocate_kv_cache(num_blocks); }
    Tensor forward(const ForwardBatch& batch) override {
        submit(batch);
        return collect();
    }
    void submit(const ForwardBatch& batch) override {
        K2_CHECK(!m_queued.has_value(), "queued model: submit before the previous step was collected");
        m_queued = batch;
    }
    bool samples_on_device() const override { return m_inner->samples_on_device(); }
    const std::vector<int32_t>& sampled_tokens() const override { return m_inner->sampled_tokens(); }
    Tensor collect() override {
        K2_CHECK(m_queued.has_value(), "queued model: collect without submit");
        ForwardBatch batch = std::move(*m_queued);
        m_queued.reset();
        return m_inner->forward(batch);
    }

private:
    std::unique_ptr<Model> m_inner;
    std::optional<ForwardBatch> m_queued;
};

// A model that samples on its "device" (Model::samples_on_device) like the CUDA one, with the host sampler's own
// functions on the rows the engine marked: its tokens go out through sampled_tokens(), and those rows' logits are
// returned as NaN (the CUDA model never downloads them), so an engine that still read them would sample garbage.
// It counts the rows of each mode it saw.
class DeviceSamplingModel final : public Model {
public:
    explicit DeviceSamplingModel(std::unique_ptr<Model> inner) : m_inner(std::move(inner)) {}
    const ModelConfig& config() const override { return m_inner->config(); }
    size_t kv_cache_bytes_per_block() const override { return m_inner->kv_cache_bytes_per_block(); }
    void allocate_kv_cache(int num_blocks) override { m_inner->allocate_kv_cache(num_blocks); }
    bool samples_on_device() const override { return true; }
    const std::vector<int32_t>& sampled_tokens() const override { return m_tokens; }
    Tensor forward(const ForwardBatch& batch) override {
        Tensor logits = m_inner->forward(batch);  // [num_logits, vocab]
        m_tokens.assign(batch.device_sampling.size(), -1);
        const auto vocab = static_cast<size_t>(logits.dim(1));
        for (size_t r = 0; r < batch.device_sampling.size(); ++r) {
            const DeviceSampleRow& row = batch.device_sampling[r];
            std::span<float> values(logits.data_as<float>() + r * vocab, vocab);
            mode_counts[static_cast<size_t>(row.mode)] += 1;
            if (row.mode == RowSampling::Host)
                continue;
            if (row.mode == RowSampling::Filtered) {  // what the CUDA sampler receives of the request's params
                SamplingParams params;
                params.temperature = row.temperature;
                params.top_k = row.top_k;
                params.top_p = row.top_p;
                params.min_p = row.min_p;
                m_tokens[r] = draw_sampled(values, params, row.uniform);
            } else {
                m_tokens[r] = row.mode == RowSampling::Greedy
                                  ? greedy_token(values)
                                  : draw_with_temperature(values, row.inv_temperature, row.uniform);
            }
            std::fill(values.begin(), values.end(), std::numeric_limits<float>::quiet_NaN());
        }
        return logits;
    }
    std::array<int, 4> mode_counts{};  // rows seen per RowSampling

private:
    std::unique_ptr<Model> m_inner;
    std::vector<int32_t> m_tokens;
};

// A small vocabulary makes the FakeModel's EOS (the last id) a frequent greedy and sampled token.
constexpr int kVocab = 16;

std::vector<int32_t> random_tokens(std::mt19937& rng, int count) {
    std::vector<int32_t> tokens;
    for (int i = 0; i < count; ++i)
        tokens.push_back(static_cast<int32_t>(rng() % (kVocab - 1)));
    return tokens;
}

std::unique_ptr<Engine> fake_engine(EngineConfig config, bool async, std::shared_ptr<FakeModelLog> log = nullptr,
                                    DeviceSamplingModel** device_sampling = nullptr) {
    config.async_scheduling = async;
    if (log == nullptr)
        log = std::make_shared<FakeModelLog>();
    std::unique_ptr<Model> model = std::make_unique<FakeModel>(kVocab, 4096, log);
    if (device_sampling != nullptr) {
        auto sampling = std::make_unique<DeviceSamplingModel>(std::move(model));
        *device_sampling = sampling.get();
        model = std::move(sampling);
    }
    return std::make_unique<Engine>(config, std::make_unique<QueuedModel>(std::move(model)), nullptr);
}

void expect_same_logprobs(const std::vector<TokenLogprobs>& a, const std::vector<TokenLogprobs>& b,
                          const std::string& what) {
    ASSERT_EQ(a.size(), b.size()) << what;
    for (size_t i = 0; i < a.size(); ++i) {
        EXPECT_EQ(a[i].token_id, b[i].token_id) << what << " row " << i;
        EXPECT_EQ(a[i].logprob, b[i].logprob) << what << " row " << i;
        ASSERT_EQ(a[i].top.size(), b[i].top.size()) << what << " row " << i;
        for (size_t k = 0; k < a[i].top.size(); ++k) {
            EXPECT_EQ(a[i].top[k].token_id, b[i].top[k].token_id) << what << " row " << i;
        }
    }
}

void expect_same_result(const SeqResult& sync, const SeqResult& async, const std::string& what) {
    EXPECT_EQ(async.token_ids, sync.token_ids) << what;
    EXPECT_EQ(async.text, sync.text) << what;
    EXPECT_EQ(async.finish_reason, sync.finish_reason) << what;
    EXPECT_EQ(async.stop_reason, sync.stop_reason) << what;
    EXPECT_EQ(async.num_finished, 1) << what;
    EXPECT_EQ(sync.num_finished, 1) << what;
    expect_same_logprobs(sync.logprobs, async.logprobs, what + " logprobs");
    expect_same_logprobs(sync.prompt_logprobs, async.prompt_logprobs, what + " prompt logprobs");
}

// A mixed workload submitted at once: greedy (against the full-recompute reference), seeded and unseeded sampling,
// n = 2, EOS on, stop token ids, min_tokens, logprobs and prompt logprobs, and prompts sharing 64- and 128-token
// prefixes. Returns every sequence's result keyed by "request/index".
struct Workload {
    std::vector<EngineRequest> requests;
};

Workload mixed_workload(int num_requests) {
    std::mt19937 rng(2024);
    const std::vector<std::vector<int32_t>> prefixes = {random_tokens(rng, 64), random_tokens(rng, 128)};
    Workload workload;
    for (int i = 0; i < num_requests; ++i) {
        std::vector<int32_t> prompt;
        if (i % 3 == 0)
            prompt = prefixes[static_cast<size_t>(i / 3) % prefixes.size()];
        const auto tail = random_tokens(rng, 1 + static_cast<int>(rng() % 90));
        prompt.insert(prompt.end(), tail.begin(), tail.end());
        EngineRequest request = make_request(fmt::format("r{}", i), prompt, 2 + static_cast<int>(rng() % 40));
        request.params.ignore_eos = i % 2 == 0;
        switch (i % 5) {
            case 0:
                break;  // greedy
            case 1:
                request.params.temperature = 1.0;
                request.params.seed = 1000 + i;
                request.params.logprobs = 2;
                break;
            case 2:
                request.params.temperature = 0.7;  // seeded from the engine RNG
                request.params.top_k = 8;
                request.params.n = 2;
                break;
            case 3:
                request.params.stop_token_ids = {static_cast<int32_t>(rng() % (kVocab - 1))};
                request.params.min_tokens = 2;
                break;
            default:
                request.params.temperature = 1.3;
                request.params.seed = 7;
                request.params.prompt_logprobs = 1;
                break;
        }
        workload.requests.push_back(std::move(request));
    }
    return workload;
}

std::map<std::string, SeqResult> run_workload(Engine& engine, const Workload& workload) {
    std::vector<std::pair<std::string, std::shared_ptr<RequestStream>>> streams;
    for (const EngineRequest& request : workload.requests) {
        streams.emplace_back(request.request_id, engine.submit(request));
    }
    run_to_completion(engine);
    std::map<std::string, SeqResult> results;
    for (const auto& [id, stream] : streams) {
        for (auto& [index, result] : collect(*stream))
            results[fmt::format("{}/{}", id, index)] = std::move(result);
    }
    const EngineStats stats = engine.stats();
    EXPECT_EQ(stats.num_free_blocks, stats.num_total_blocks) << "blocks leaked";
    EXPECT_EQ(stats.num_running + stats.num_waiting, 0);
    return results;
}

void expect_same_results(const std::map<std::string, SeqResult>& sync, const std::map<std::string, SeqResult>& async) {
    ASSERT_EQ(sync.size(), async.size());
    for (const auto& [key, result] : sync)
        expect_same_result(result, async.at(key), key);
}

void expect_greedy_matches_reference(const Workload& workload, const std::map<std::string, SeqResult>& results) {
    for (const EngineRequest& request : workload.requests) {
        if (request.params.temperature != 0.0 || !request.params.stop_token_ids.empty())
            continue;
        const SeqResult& result = results.at(request.request_id + "/0");
        auto expected = reference_greedy(request.prompt_token_ids, request.params.max_tokens, kVocab);
        if (!request.params.ignore_eos) {
            const auto eos = std::find(expected.begin(), expected.end(), kVocab - 1);
            if (eos != expected.end())
                expected.erase(eos + 1, expected.end());
        }
        EXPECT_EQ(result.token_ids, expected) << request.request_id;
    }
}

// The workload through a sync and an async engine of the same config: the same results, greedy ones equal to the
// reference. The engines are returned for their stats.
struct SyncAndAsync {
    std::unique_ptr<Engine> sync_engine;
    std::unique_ptr<Engine> async_engine;
};

SyncAndAsync run_both(const Workload& workload, const EngineConfig& config) {
    SyncAndAsync engines{fake_engine(config, false), fake_engine(config, true)};
    const auto sync = run_workload(*engines.sync_engine, workload);
    const auto async = run_workload(*engines.async_engine, workload);
    expect_same_results(sync, async);
    expect_greedy_matches_reference(workload, async);
    return engines;
}

TEST(EngineAsync, MixedConcurrentLoadMatchesTheSyncEngine) {
    const Workload workload = mixed_workload(40);
    const EngineConfig config{.max_num_batched_tokens = 96, .num_kv_blocks = 64};
    const auto [sync_engine, async_engine] = run_both(workload, config);
    EXPECT_GT(async_engine->stats().prefix_cache_hits, 0u);
    EXPECT_GT(async_engine->stats().requests_finished_by_reason.at("stop"), 5u);  // EOS and stop ids mid-stream
}

TEST(EngineAsync, PreemptionMatchesTheSyncEngine) {
    // 8 blocks (512 tokens) for 40 requests of up to ~260 tokens: preemption while a step is in flight.
    const Workload workload = mixed_workload(40);
    const EngineConfig config{.max_num_batched_tokens = 128, .max_model_len = 512, .num_kv_blocks = 8};
    const auto [sync_engine, async_engine] = run_both(workload, config);
    EXPECT_GT(sync_engine->stats().preemptions, 0u);
    EXPECT_GT(async_engine->stats().preemptions, 0u);
}

// The pipelining itself: step k+1 is built before step k's tokens are known, so a sequence that stops on a token
// still computes exactly one dropped row; one that ends on max_tokens computes none (its end is known early).
TEST(EngineAsync, TheNextStepIsBuiltBeforeTheLastOneIsSampled) {
    std::mt19937 rng(3);
    std::vector<EngineRequest> requests;
    int num_token_stops = 0;
    for (int i = 0; i < 8; ++i) {
        const auto prompt = random_tokens(rng, 3 + i * 7);
        const auto greedy = reference_greedy(prompt, 12, kVocab);
        EngineRequest request = make_request(fmt::format("s{}", i), prompt, 12);
        if (i % 2 == 0) {
            request.params.stop_token_ids = {greedy[9]};  // stops at its first occurrence, before max_tokens
            num_token_stops += 1;
        }
        requests.push_back(std::move(request));
    }
    ASSERT_GT(num_token_stops, 0);
    auto run = [&](bool async) {
        auto log = std::make_shared<FakeModelLog>();
        auto engine = fake_engine({.num_kv_blocks = 64}, async, log);
        Workload workload{requests};
        return std::pair(run_workload(*engine, workload), log->total_tokens);
    };
    const auto [sync, sync_tokens] = run(false);
    const auto [async, async_tokens] = run(true);
    expect_same_results(sync, async);
    EXPECT_EQ(async_tokens, sync_tokens + num_token_stops);
}

TEST(EngineAsync, AbortMidStreamEndsTheSequenceAndFreesItsBlocks) {
    std::mt19937 rng(11);
    for (const bool async : {false, true}) {
        auto engine = fake_engine({.num_kv_blocks = 32}, async);
        std::vector<std::vector<int32_t>> prompts;
        std::vector<std::shared_ptr<RequestStream>> streams;
        for (int i = 0; i < 6; ++i) {
            prompts.push_back(random_tokens(rng, 5 + i * 20));
            streams.push_back(engine->submit(make_request(fmt::format("a{}", i), prompts.back(), 40)));
        }
        for (int step = 0; step < 6; ++step)
            engine->step();
        for (int i = 0; i < 6; i += 2)
            engine->abort(fmt::format("a{}", i));
        run_to_completion(*engine);
        for (int i = 0; i < 6; ++i) {
            const SeqResult result = collect(*streams[static_cast<size_t>(i)])[0];
            const auto expected = reference_greedy(prompts[static_cast<size_t>(i)], 40, kVocab);
            EXPECT_EQ(result.num_finished, 1);
            if (i % 2 == 0) {
                EXPECT_EQ(result.finish_reason, "abort") << "async " << async;
                EXPECT_GT(result.token_ids.size(), 0u);
                EXPECT_LT(result.token_ids.size(), 40u);
                EXPECT_TRUE(std::equal(result.token_ids.begin(), result.token_ids.end(), expected.begin()));
            } else {
                EXPECT_EQ(result.token_ids, expected) << "async " << async;
            }
        }
        const EngineStats stats = engine->stats();
        EXPECT_EQ(stats.num_free_blocks, stats.num_total_blocks);
    }
}

TEST(EngineAsync, LoopThreadWithConcurrentClientsAndAborts) {
    auto engine = fake_engine(
        {.max_num_seqs = 16, .max_num_batched_tokens = 128, .max_model_len = 256, .num_kv_blocks = 10}, true);
    engine->start();
    std::vector<std::thread> clients;
    std::atomic<int> num_finished{0};
    std::atomic<int> num_wrong{0};
    for (int client = 0; client < 4; ++client) {
        clients.emplace_back([&, client] {
            std::mt19937 rng(static_cast<uint32_t>(100 + client));
            std::vector<std::pair<std::vector<int32_t>, std::shared_ptr<RequestStream>>> streams;
            for (int i = 0; i < 25; ++i) {
                const std::string id = fmt::format("c{}_{}", client, i);
                auto prompt = random_tokens(rng, 1 + static_cast<int>(rng() % 120));
                streams.emplace_back(prompt,
                                     engine->submit(make_request(id, prompt, 1 + static_cast<int>(rng() % 20))));
                if (rng() % 4 == 0)
                    engine->abort(id);
            }
            for (const auto& [prompt, stream] : streams) {
                std::vector<int32_t> tokens;
                while (!stream->all_finished()) {
                    for (const RequestOutput& output : stream->wait_pop(std::chrono::milliseconds(100))) {
                        tokens.insert(tokens.end(), output.new_token_ids.begin(), output.new_token_ids.end());
                    }
                }
                for (const RequestOutput& output : stream->try_pop()) {
                    tokens.insert(tokens.end(), output.new_token_ids.begin(), output.new_token_ids.end());
                }
                const auto expected = reference_greedy(prompt, static_cast<int>(tokens.size()), kVocab);
                if (tokens != expected)
                    ++num_wrong;
                ++num_finished;
            }
        });
    }
    for (auto& client : clients)
        client.join();
    EXPECT_EQ(num_finished.load(), 100);
    EXPECT_EQ(num_wrong.load(), 0);
    EXPECT_TRUE(engine->healthy());
    engine->stop(true);
    const EngineStats stats = engine->stats();
    EXPECT_EQ(stats.num_free_blocks, stats.num_total_blocks);
    EXPECT_EQ(stats.requests_finished_by_reason.count("error"), 0u);
}

// Stop strings over the real tokenizer: the sequence ends mid-stream on text that spans tokens, in the step after
// which the async engine has already submitted the next one.
TEST(EngineAsync, StopStringsEndMidStreamAsWithoutIt) {
    const std::shared_ptr<const Tokenizer> tokenizer = Tokenizer::load(fixture_path("tiny-kimi-k2"));
    const int vocab = tokenizer->vocab_size();
    std::vector<bool> ascii(static_cast<size_t>(vocab), false);
    for (int32_t id = 0; id < tokenizer->num_base_tokens(); ++id) {
        const std::string& bytes = tokenizer->token_bytes(id);
        ascii[static_cast<size_t>(id)] =
            std::all_of(bytes.begin(), bytes.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
    }
    std::mt19937 rng(17);
    std::vector<EngineRequest> requests;
    std::vector<std::string> prefixes;  // the text before the stop string, from the reference greedy continuation
    for (int i = 0; i < 6; ++i) {
        std::vector<int32_t> prompt;
        for (int k = 0; k < 12; ++k)
            prompt.push_back(static_cast<int32_t>(rng() % 3000));
        const auto greedy = reference_greedy(prompt, 24, vocab, &ascii);
        const std::string text = tokenizer->decode(greedy, true);
        const size_t at = 8 + static_cast<size_t>(i) * 5;  // the stop string starts at byte `at`
        ASSERT_GT(text.size(), at + 3);
        const std::string stop = text.substr(at, 3);
        EngineRequest request = make_request(fmt::format("t{}", i), prompt, 24);
        request.params.stop = {stop};
        request.params.include_stop_str_in_output = i % 2 == 1;
        prefixes.push_back(text.substr(0, text.find(stop)) + (i % 2 == 1 ? stop : ""));
        requests.push_back(std::move(request));
    }
    auto run = [&](bool async) {
        auto model = std::make_unique<FakeModel>(vocab);
        model->set_allowed_tokens(ascii);
        Engine engine(EngineConfig{.num_kv_blocks = 64, .async_scheduling = async},
                      std::make_unique<QueuedModel>(std::move(model)), tokenizer);
        return run_workload(engine, Workload{requests});
    };
    const auto sync = run(false);
    const auto async = run(true);
    expect_same_results(sync, async);
    for (size_t i = 0; i < requests.size(); ++i) {
        const SeqResult& result = async.at(fmt::format("t{}/0", i));
        EXPECT_EQ(result.finish_reason, "stop") << i;
        EXPECT_EQ(result.text, prefixes[i]) << i;
        EXPECT_LT(result.token_ids.size(), 24u) << i;
    }
}

// The real tiny-kimi-k2 checkpoint on the CPU: the fixture's transformers goldens (greedy, 12 tokens) among seeded
// sampled requests, under preemption (6 blocks), and the sampled requests' tokens equal the sync engine's.
TEST(EngineAsyncTiny, GoldensAndSeededSamplingUnderPreemption) {
    std::ifstream file(fixture_path("tiny-kimi-k2") / "golden.json");
    const auto golden = nlohmann::json::parse(file);
    std::vector<EngineRequest> requests;
    std::vector<std::vector<int32_t>> expected;
    for (const auto& prompt : golden.at("prompts")) {
        requests.push_back(
            make_request(fmt::format("g{}", requests.size()), prompt.at("ids").get<std::vector<int32_t>>(), 12));
        expected.push_back(prompt.at("greedy_12").get<std::vector<int32_t>>());
    }
    const size_t num_goldens = requests.size();
    std::mt19937 rng(5);
    for (int j = 0; j < 5; ++j) {
        std::vector<int32_t> prompt;
        for (int k = 0; k < 62; ++k)
            prompt.push_back(static_cast<int32_t>(rng() % 3840));
        EngineRequest noise = make_request(fmt::format("noise{}", j), prompt, 1 + static_cast<int>(rng() % 8));
        noise.params.temperature = 0.8;
        noise.params.seed = j;
        requests.push_back(std::move(noise));
    }
    auto run = [&](bool async, uint64_t* preemptions) {
        Engine engine(EngineConfig{.max_model_len = 384, .num_kv_blocks = 6, .async_scheduling = async},
                      load_model(fixture_path("tiny-kimi-k2"), ModelOptions{}), nullptr);
        auto results = run_workload(engine, Workload{requests});
        *preemptions = engine.stats().preemptions;
        return results;
    };
    uint64_t sync_preemptions = 0, async_preemptions = 0;
    const auto sync = run(false, &sync_preemptions);
    const auto async = run(true, &async_preemptions);
    expect_same_results(sync, async);
    for (size_t i = 0; i < num_goldens; ++i)
        EXPECT_EQ(async.at(fmt::format("g{}/0", i)).token_ids, expected[i]) << i;
    EXPECT_GT(async_preemptions, 0u);
}

// A prefix-cache hit on the tiny model: the second request computes only its 7 new prompt tokens and its decode
// rows, and its tokens and logprobs are the sync engine's.
TEST(EngineAsyncTiny, PrefixCacheHit) {
    std::ifstream file(fixture_path("tiny-kimi-k2") / "golden.json");
    const auto golden = nlohmann::json::parse(file);
    const auto long_prompt = golden.at("prompts").at(3).at("ids").get<std::vector<int32_t>>();
    ASSERT_EQ(long_prompt.size(), 200u);
    std::vector<int32_t> second(long_prompt.begin(), long_prompt.begin() + 192);
    for (const int32_t t : {11, 222, 3333, 44, 555, 66, 777})
        second.push_back(t);
    auto run = [&](bool async, uint64_t* hits) {
        Engine engine(EngineConfig{.num_kv_blocks = 32, .async_scheduling = async},
                      load_model(fixture_path("tiny-kimi-k2"), ModelOptions{}), nullptr);
        run_workload(engine, Workload{{make_request("first", long_prompt, 2)}});
        const uint64_t before = engine.stats().prefix_cache_hits;
        EngineRequest request = make_request("second", second, 6);
        request.params.logprobs = 3;
        auto results = run_workload(engine, Workload{{request}});
        *hits = engine.stats().prefix_cache_hits - before;
        return results;
    };
    uint64_t sync_hits = 0, async_hits = 0;
    const auto sync = run(false, &sync_hits);
    const auto async = run(true, &async_hits);
    expect_same_results(sync, async);
    EXPECT_EQ(sync_hits, 192u);
    EXPECT_EQ(async_hits, 192u);
    EXPECT_EQ(async.at("second/0").num_cached_tokens, 192);
}

// The scheduler and batch builder alone: a sequence whose token is in flight gets a decode row with a placeholder
// input at the right position, the row cannot go out before the token is sampled, and a sequence whose in-flight
// token reaches max_tokens gets no row.
TEST(EngineAsyncScheduler, PlaceholderRowIsPatchedWithTheSampledToken) {
    KvCacheManager kv(16, kKvBlockSize, true);
    Scheduler scheduler(SchedulerConfig{.max_model_len = 1024}, kv);
    auto owned = std::make_unique<Request>();
    Request* request = owned.get();
    owned->request_id = "a";
    owned->seq_id = 1;
    owned->token_ids = {5, 6, 7};
    owned->num_prompt_tokens = 3;
    owned->max_tokens = 3;
    scheduler.add(std::move(owned));

    const SchedulerOutput prefill = scheduler.schedule();
    ASSERT_EQ(prefill.seqs.size(), 1u);
    const BuiltBatch first = build_forward_batch(prefill, kv);
    EXPECT_TRUE(first.placeholders.empty());
    EXPECT_EQ(first.rows[0].sample_row, 0);
    scheduler.on_step_scheduled(prefill);
    EXPECT_EQ(request->num_output_placeholders, 1);

    const SchedulerOutput decode = scheduler.schedule();  // built while the prefill runs
    ASSERT_EQ(decode.seqs.size(), 1u);
    EXPECT_EQ(decode.seqs[0].num_new_tokens, 1);
    BuiltBatch second = build_forward_batch(decode, kv);
    ASSERT_EQ(second.placeholders.size(), 1u);
    EXPECT_EQ(second.batch.positions, std::vector<int32_t>{3});
    EXPECT_EQ(second.batch.seq_lens, std::vector<int32_t>{4});
    EXPECT_EQ(second.batch.token_ids, std::vector<int32_t>{kPlaceholderTokenId});
    EXPECT_EQ(second.rows[0].sample_row, 0);
    EXPECT_THROW(patch_placeholders(second), Error);  // the prefill's token is not sampled yet
    scheduler.on_step_scheduled(decode);
    EXPECT_EQ(request->num_output_placeholders, 2);

    request->token_ids.push_back(11);  // the prefill's sampled token
    request->num_output_placeholders -= 1;
    EXPECT_EQ(patch_placeholders(second), 0);
    EXPECT_EQ(second.batch.token_ids, std::vector<int32_t>{11});
    // 1 output token + 1 in flight of max_tokens 3: one more row; with max_tokens 2 the in-flight token ends it.
    EXPECT_EQ(scheduler.schedule().seqs.size(), 1u);
    request->max_tokens = 2;
    EXPECT_TRUE(scheduler.schedule().empty());
}

// Sampling on the model's device: greedy, plain temperature and top-k / top-p / min-p rows (seeded or not) take the
// device's tokens with uniforms the engine drew when it built the step, everything else stays on the host; the
// results must be the host-only engine's, token for token, with and without --async-scheduling and under preemption.
TEST(EngineDeviceSampling, SameTokensAsHostSampling) {
    Workload workload = mixed_workload(40);
    for (size_t i = 0; i < workload.requests.size(); ++i) {
        SamplingParams& params = workload.requests[i].params;
        if (i % 5 == 1)
            params.logprobs.reset();  // seeded plain temperature 1.0: now device-sampled
        if (i % 10 == 4)
            params.prompt_logprobs.reset();  // seeded temperature 1.3, half of them
        // Temperature 0.7, top-k 8: all three filters on half of them.
        if (i % 10 == 7) {
            params.top_p = 0.9;
            params.min_p = 0.05;
        }
    }
    for (const EngineConfig& config :
         {EngineConfig{.max_num_batched_tokens = 96, .num_kv_blocks = 64},
          EngineConfig{.max_num_batched_tokens = 128, .max_model_len = 512, .num_kv_blocks = 8}}) {
        const auto host = run_workload(*fake_engine(config, false), workload);
        for (const bool async : {false, true}) {
            DeviceSamplingModel* model = nullptr;
            const auto engine = fake_engine(config, async, nullptr, &model);
            const auto device = run_workload(*engine, workload);
            expect_same_results(host, device);
            expect_greedy_matches_reference(workload, device);
            EXPECT_GT(model->mode_counts[static_cast<size_t>(RowSampling::Greedy)], 100) << "async " << async;
            EXPECT_GT(model->mode_counts[static_cast<size_t>(RowSampling::Temperature)], 100) << "async " << async;
            EXPECT_GT(model->mode_counts[static_cast<size_t>(RowSampling::Filtered)], 100) << "async " << async;
            EXPECT_GT(model->mode_counts[static_cast<size_t>(RowSampling::Host)], 100) << "async " << async;
        }
    }
}

TEST(EngineDeviceSampling, RowModesFollowTheSamplingParams) {
    SamplingParams params;
    params.temperature = 0.0;
    EXPECT_EQ(device_row_sampling(params), RowSampling::Greedy);
    params.temperature = 0.8;
    EXPECT_EQ(device_row_sampling(params), RowSampling::Temperature);
    using Change = std::function<void(SamplingParams&)>;
    // Filters of the distribution: a filtered device draw, nothing to a greedy pick (argmax ignores them, as on the
    // host).
    for (const Change& change :
         std::vector<Change>{[](SamplingParams& p) { p.top_k = 5; }, [](SamplingParams& p) { p.top_p = 0.9; },
                             [](SamplingParams& p) { p.min_p = 0.1; }}) {
        SamplingParams changed = params;
        change(changed);
        EXPECT_EQ(device_row_sampling(changed), RowSampling::Filtered);
        changed.temperature = 0.0;
        EXPECT_EQ(device_row_sampling(changed), RowSampling::Greedy);
    }
    // What reads or changes the logits: host for both.
    for (const Change& change : std::vector<Change>{
             [](SamplingParams& p) { p.logprobs = 0; }, [](SamplingParams& p) { p.prompt_logprobs = 1; },
             [](SamplingParams& p) { p.min_tokens = 3; }, [](SamplingParams& p) { p.repetition_penalty = 1.1; },
             [](SamplingParams& p) { p.frequency_penalty = 0.5; }, [](SamplingParams& p) { p.presence_penalty = 0.5; },
             [](SamplingParams& p) {
                 p.logit_bias = {{3, 1.0f}};
             }}) {
        SamplingParams changed = params;
        change(changed);
        EXPECT_EQ(device_row_sampling(changed), RowSampling::Host);
        changed.temperature = 0.0;
        EXPECT_EQ(device_row_sampling(changed), RowSampling::Host);
    }
}

}  // namespace
}  // namespace k2

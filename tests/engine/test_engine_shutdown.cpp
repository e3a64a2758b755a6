// Engine::stop with a drain deadline (k2 serve --shutdown-timeout): running requests that would outlive the
// deadline end with finish_reason "abort", the loop exits, and every KV block is free again.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "engine/engine.h"
#include "engine_test_util.h"
#include "fake_model.h"

namespace k2 {
namespace {

using testing::collect;
using testing::FakeModel;
using testing::FakeModelLog;
using testing::make_request;

TEST(EngineShutdown, DrainStopsAtTheDeadline) {
    constexpr int kMaxTokens = 60000;  // tens of thousands of steps: far longer than the 20 ms deadline
    EngineConfig config{.max_num_seqs = 4, .num_kv_blocks = 5000};
    auto engine = std::make_unique<Engine>(
        config, std::make_unique<FakeModel>(256, kMaxTokens + 100, std::make_shared<FakeModelLog>()), nullptr);
    engine->start();
    auto short_stream = engine->submit(make_request("short", {1, 2, 3}, 2));
    auto long_stream = engine->submit(make_request("long", {4, 5, 6}, kMaxTokens));
    while (!short_stream->all_finished())
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const auto start = std::chrono::steady_clock::now();
    engine->stop(/*drain=*/true, start + std::chrono::milliseconds(20));
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
    EXPECT_EQ(collect(*short_stream)[0].finish_reason, "length");
    ASSERT_TRUE(long_stream->all_finished());
    EXPECT_EQ(collect(*long_stream)[0].finish_reason, "abort");
    EXPECT_EQ(engine->stats().num_free_blocks, engine->stats().num_total_blocks);
}

TEST(EngineShutdown, DrainFinishesWhatEndsBeforeTheDeadline) {
    auto engine =
        std::make_unique<Engine>(EngineConfig{.max_num_seqs = 4, .num_kv_blocks = 256},
                                 std::make_unique<FakeModel>(256, 4096, std::make_shared<FakeModelLog>()), nullptr);
    engine->start();
    auto stream = engine->submit(make_request("r", {1, 2, 3}, 50));
    engine->stop(/*drain=*/true, std::chrono::steady_clock::now() + std::chrono::seconds(60));
    ASSERT_TRUE(stream->all_finished());
    const auto result = collect(*stream)[0];
    EXPECT_EQ(result.finish_reason, "length");
    EXPECT_EQ(result.token_ids.size(), 50u);
}

}  // namespace
}  // namespace k2

// Engine + the real tokenizer (tiny-kimi-k2's) over the FakeModel: text deltas add up to the decoded
// output, and stop strings that span token boundaries end the sequence with the text before them.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "../unit/test_paths.h"
#include "engine/engine.h"
#include "engine_test_util.h"
#include "fake_model.h"
#include "tokenizer/tokenizer.h"

namespace k2 {
namespace {

using testing::collect;
using testing::make_request;
using testing::reference_greedy;
using testing::run_to_completion;

class EngineText : public ::testing::Test {
protected:
    void SetUp() override {
        m_tokenizer = Tokenizer::load(fixture_path("tiny-kimi-k2"));
        m_vocab = m_tokenizer->vocab_size();
        std::mt19937 rng(17);
        // Plain BPE tokens only, so every output token has text.
        for (int i = 0; i < 12; ++i) m_prompt.push_back(static_cast<int32_t>(rng() % 3000));
        // Outputs restricted to printable-ASCII BPE tokens, so byte-level decoding has no replacement chars.
        m_ascii.assign(static_cast<size_t>(m_vocab), false);
        for (int32_t id = 0; id < m_tokenizer->num_base_tokens(); ++id) {
            const std::string& bytes = m_tokenizer->token_bytes(id);
            m_ascii[static_cast<size_t>(id)] = std::all_of(bytes.begin(), bytes.end(), [](char c) {
                return c >= 0x20 && c < 0x7f;
            });
        }
    }

    std::vector<int32_t> greedy(int num_new) const { return reference_greedy(m_prompt, num_new, m_vocab, &m_ascii); }

    std::unique_ptr<Engine> make_engine() {
        auto model = std::make_unique<testing::FakeModel>(m_vocab);
        model->set_allowed_tokens(m_ascii);
        return std::make_unique<Engine>(EngineConfig{.num_kv_blocks = 64}, std::move(model), m_tokenizer);
    }

    std::shared_ptr<const Tokenizer> m_tokenizer;
    int m_vocab = 0;
    std::vector<int32_t> m_prompt;
    std::vector<bool> m_ascii;
};

TEST_F(EngineText, DeltasAddUpToTheDecodedOutput) {
    auto engine = make_engine();
    auto request = make_request("a", m_prompt, 24);
    request.params.skip_special_tokens = true;
    auto stream = engine->submit(request);
    run_to_completion(*engine);
    const auto result = collect(*stream)[0];
    ASSERT_EQ(result.token_ids.size(), 24u);
    EXPECT_EQ(result.token_ids, greedy(24));
    EXPECT_EQ(result.text, m_tokenizer->decode(result.token_ids, true));
}

TEST_F(EngineText, StopStringAcrossTokenBoundaries) {
    const auto expected = greedy(24);
    // Find a boundary inside the text with at least 2 bytes on each side within neighbouring tokens.
    std::string prefix_text;
    std::string stop;
    size_t stop_token_idx = 0;
    for (size_t i = 4; i + 1 < expected.size() && stop.empty(); ++i) {
        const std::string before = m_tokenizer->decode(std::span(expected).first(i), true);
        const std::string with_next = m_tokenizer->decode(std::span(expected).first(i + 1), true);
        if (before.size() >= 2 && with_next.size() >= before.size() + 2 &&
            with_next.compare(0, before.size(), before) == 0) {
            stop = with_next.substr(before.size() - 2, 4);
            prefix_text = before.substr(0, before.size() - 2);
            stop_token_idx = i;
        }
    }
    ASSERT_FALSE(stop.empty()) << "no usable token boundary in the greedy text";
    ASSERT_EQ(prefix_text.find(stop), std::string::npos) << "stop string occurs earlier; pick another seed";
    auto engine = make_engine();
    auto request = make_request("a", m_prompt, 24);
    request.params.stop = {stop};
    auto stream = engine->submit(request);
    request.request_id = "b";
    request.params.include_stop_str_in_output = true;
    auto include_stream = engine->submit(request);
    run_to_completion(*engine);
    const auto result = collect(*stream)[0];
    EXPECT_EQ(result.finish_reason, "stop");
    EXPECT_EQ(std::get<std::string>(result.stop_reason), stop);
    EXPECT_EQ(result.text, prefix_text);
    EXPECT_EQ(result.token_ids.size(), stop_token_idx + 1);
    const auto included = collect(*include_stream)[0];
    EXPECT_EQ(included.text, prefix_text + stop);
}

TEST_F(EngineText, EosFromTheTokenizerStops) {
    const auto stop_ids = m_tokenizer->stop_token_ids();
    ASSERT_FALSE(stop_ids.empty());
    const auto expected = greedy(6);
    // Not an EOS in this greedy path, but stop_token_ids makes a later token end it; EOS handling is the
    // same branch (the tokenizer's ids), checked here through ignore_eos = false not stopping early.
    auto engine = make_engine();
    auto request = make_request("a", m_prompt, 6);
    request.params.ignore_eos = false;
    auto stream = engine->submit(request);
    run_to_completion(*engine);
    EXPECT_EQ(collect(*stream)[0].token_ids, expected);
}

}  // namespace
}  // namespace k2

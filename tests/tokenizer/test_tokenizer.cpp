// Encoding against tiktoken's ids for the fixture corpora (three cases), round trips, special tokens.
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <thread>
#include <nlohmann/json.hpp>

#include "../unit/test_paths.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace k2 {
namespace {

nlohmann::json read_json(const std::filesystem::path& path) {
    std::ifstream in(path);
    return nlohmann::json::parse(in);
}

struct Case {
    const char* model;      // fixture path of the model dir or rank file
    const char* pattern;    // pre-tokenizer ("" = the checkpoint's default)
    const char* expected;   // tiktoken's output
};

const Case kCases[] = {
    {"tokenizer/kimi-o200k", "", "tokenizer/kimi_pat_o200k.visible.json"},
    {"tiny-kimi-k2", "", "tokenizer/kimi_pat_tiny3840.visible.json"},
    {"tokenizer/cl100k_base.tiktoken", "cl100k", "tokenizer/cl100k.visible.json"},
};

class TiktokenFixture : public ::testing::TestWithParam<Case> {};

TEST_P(TiktokenFixture, MatchesTiktokenIdsAndRoundTrips) {
    const Case& c = GetParam();
    auto tokenizer = Tokenizer::load(fixture_path(c.model), c.pattern);
    nlohmann::json expected = read_json(fixture_path(c.expected));
    ASSERT_GE(expected["rows"].size(), 100u);
    for (const auto& row : expected["rows"]) {
        const std::string text = row["text"].get<std::string>();
        auto ids = tokenizer->encode(text, /*allow_special=*/true);
        auto ids_plain = tokenizer->encode(text, /*allow_special=*/false);
        EXPECT_EQ(ids, row["ids"].get<std::vector<int32_t>>()) << c.model << " text: " << text;
        EXPECT_EQ(ids_plain, row["ids_no_special"].get<std::vector<int32_t>>()) << c.model << " text: " << text;
        EXPECT_EQ(tokenizer->decode(ids), text);
        EXPECT_EQ(tokenizer->decode(ids_plain), text);
    }
}

std::string case_name(const ::testing::TestParamInfo<Case>& param) {
    static const char* const kNames[] = {"kimi_o200k", "kimi_tiny3840", "cl100k"};
    return kNames[param.index];
}

INSTANTIATE_TEST_SUITE_P(Corpora, TiktokenFixture, ::testing::ValuesIn(kCases), case_name);

// Kimi's pat_str exactly as tokenization_kimi.py writes it (Rust `&&` class intersections): k2 rewrites
// it for PCRE2, so a checkpoint that ships it as `pat_str` tokenizes as tiktoken does.
TEST(Tokenizer, OriginalKimiPatternWithIntersections) {
    const std::string original =
        R"([\p{Han}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+)"
        R"((?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+)"
        R"([\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*)"
        R"(|\s*[\r\n]+|\s+(?!\S)|\s+)";
    auto tok = Tokenizer::load(fixture_path("tokenizer/kimi-o200k"), original);
    std::ifstream in(fixture_path("tokenizer/kimi_pat_o200k.visible.json"));
    auto expected = nlohmann::json::parse(in);
    for (const auto& row : expected["rows"]) {
        EXPECT_EQ(tok->encode(row["text"].get<std::string>()), row["ids"].get<std::vector<int32_t>>()) << row["text"];
    }
}

TEST(Tokenizer, KimiSpecialTokensFromConfig) {
    auto tok = Tokenizer::load(fixture_path("tiny-kimi-k2"));
    EXPECT_EQ(tok->num_base_tokens(), 3840);
    EXPECT_EQ(tok->vocab_size(), 4096);
    EXPECT_EQ(tok->token_to_id("[BOS]"), 3840);
    EXPECT_EQ(tok->token_to_id("<|im_end|>"), 3842);
    EXPECT_EQ(tok->token_to_id("<|im_middle|>"), 3857);
    EXPECT_EQ(tok->token_to_id("[PAD]"), 4095);
    EXPECT_EQ(tok->token_bytes(3843), "<|im_user|>");
    EXPECT_EQ(tok->token_bytes(3845), "<|reserved_token_3845|>");  // not named by the config
    EXPECT_TRUE(tok->is_special(3842));
    for (int32_t id = 3851; id <= 3855; ++id) EXPECT_FALSE(tok->is_special(id)) << tok->token_bytes(id);
    EXPECT_FALSE(tok->is_special(100));
    EXPECT_EQ(tok->token_to_id("not a token at all"), std::nullopt);
    // No BOS is added.
    EXPECT_EQ(tok->encode("a"), std::vector<int32_t>({64}));
}

TEST(Tokenizer, StopTokenIds) {
    auto tok = Tokenizer::load(fixture_path("tiny-kimi-k2"));
    auto stops = tok->stop_token_ids();
    EXPECT_NE(std::find(stops.begin(), stops.end(), 3841), stops.end());  // [EOS]
    EXPECT_NE(std::find(stops.begin(), stops.end(), 3842), stops.end());  // <|im_end|>
}

TEST(Tokenizer, DecodeSkipsSpecialButKeepsToolCallTokens) {
    auto tok = Tokenizer::load(fixture_path("tiny-kimi-k2"));
    auto ids = tok->encode("<|im_user|>hi<|tool_call_begin|>x<|im_end|>");
    EXPECT_EQ(tok->decode(ids, /*skip_special_tokens=*/true), "hi<|tool_call_begin|>x");
    EXPECT_EQ(tok->decode(ids, false), "<|im_user|>hi<|tool_call_begin|>x<|im_end|>");
}

TEST(Tokenizer, InvalidUtf8AndBinaryBytesRoundTrip) {
    auto tok = Tokenizer::load(fixture_path("tokenizer/kimi-o200k"));
    std::string bytes;
    for (int b = 0; b < 256; ++b) bytes += static_cast<char>(255 - b);
    bytes += "\xe4\xbd";  // a truncated character
    EXPECT_EQ(tok->decode(tok->encode(bytes)), bytes);
}

TEST(Tokenizer, LongWhitespaceRunUsesTheHeapMerge) {
    auto tok = Tokenizer::load(fixture_path("tokenizer/kimi-o200k"));
    std::string text(5000, ' ');
    text += "x";
    text += std::string(3000, '\n');
    EXPECT_EQ(tok->decode(tok->encode(text)), text);
}

TEST(Tokenizer, ReloadAndConcurrentEncode) {
    std::ifstream in(fixture_path("tokenizer/tokenizer_corpus.json"));
    const auto corpus = nlohmann::json::parse(in).get<std::vector<std::string>>();
    // Tokenizers created and destroyed in turn (a new one may reuse the old one's address).
    for (int round = 0; round < 3; ++round) {
        auto tok = Tokenizer::load(fixture_path(round % 2 == 0 ? "tiny-kimi-k2" : "tokenizer/kimi-o200k"));
        for (const auto& text : corpus) ASSERT_EQ(tok->decode(tok->encode(text)), text);
    }
    // One shared tokenizer, four threads: the same ids as one thread.
    auto tok = Tokenizer::load(fixture_path("tokenizer/kimi-o200k"));
    std::vector<std::vector<int32_t>> expected;
    for (const auto& text : corpus) expected.push_back(tok->encode(text));
    std::vector<std::thread> threads;
    std::atomic<int> mismatches{0};
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&] {
            for (int rep = 0; rep < 20; ++rep) {
                for (size_t k = 0; k < corpus.size(); ++k) mismatches += tok->encode(corpus[k]) != expected[k];
            }
        });
    }
    for (auto& thread : threads) thread.join();
    EXPECT_EQ(mismatches.load(), 0);
}

TEST(Tokenizer, ErrorsNameTheFile) {
    try {
        Tokenizer::load(fixture_path("does-not-exist"));
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(e.message().find("does-not-exist"), std::string::npos) << e.message();
    }
    auto tok = Tokenizer::load(fixture_path("tiny-kimi-k2"));
    std::vector<int32_t> bad = {5000};
    EXPECT_THROW(tok->decode(bad), Error);
}

}  // namespace
}  // namespace k2

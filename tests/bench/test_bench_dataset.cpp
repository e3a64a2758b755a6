// Dataset construction of `k2 bench serve` (reference/vllm.md §4.2): random prompts are cyclic runs of
// non-special ids after a shared prefix, and re-encode to exactly the recorded length.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "../unit/test_paths.h"
#include "bench/dataset.h"
#include "core/error.h"

namespace k2::bench {
namespace {

// One character per id, so decode/encode is the identity and the token structure is visible in the text.
// Ids 0 and 9 are special.
class CharTokenizer final : public PromptTokenizer {
public:
    static constexpr std::string_view kAlphabet = "#abcdefg$hijklmnopqrstuvwxyz";
    std::vector<int32_t> encode(std::string_view text) const override {
        std::vector<int32_t> ids;
        for (const char c : text) ids.push_back(static_cast<int32_t>(kAlphabet.find(c)));
        return ids;
    }
    std::string decode(std::span<const int32_t> ids) const override {
        std::string text;
        for (const int32_t id : ids) text.push_back(kAlphabet[static_cast<size_t>(id)]);
        return text;
    }
    int32_t vocab_size() const override { return static_cast<int32_t>(kAlphabet.size()); }
    bool is_special(int32_t id) const override { return id == 0 || id == 8; }
    std::string apply_chat_template(const nlohmann::json& messages) const override {
        return "u" + messages[0]["content"].get<std::string>() + "a";
    }
};

TEST(BenchRandomDataset, CyclicNonSpecialTokensWithSharedPrefix) {
    const CharTokenizer tokenizer;
    RandomDatasetOptions options;
    options.num_requests = 20;
    options.input_len = 40;
    options.output_len = 7;
    options.prefix_len = 5;
    const std::vector<SampleRequest> samples = sample_random(tokenizer, options);
    ASSERT_EQ(samples.size(), 20u);
    const std::string allowed = "abcdefghijklmnopqrstuvwxyz";  // the alphabet minus '#' and '$'
    for (const SampleRequest& sample : samples) {
        EXPECT_EQ(sample.prompt_len, 45);
        EXPECT_EQ(sample.prompt.size(), 45u);
        EXPECT_EQ(sample.expected_output_len, 7);
        EXPECT_EQ(sample.prompt.substr(0, 5), samples[0].prompt.substr(0, 5));  // shared prefix
        EXPECT_EQ(sample.prompt.find_first_of("#$"), std::string::npos);
        // The body walks the allowed tokens cyclically.
        for (size_t j = 6; j < sample.prompt.size(); ++j) {
            const size_t prev = allowed.find(sample.prompt[j - 1]);
            EXPECT_EQ(allowed[(prev + 1) % allowed.size()], sample.prompt[j]) << sample.prompt;
        }
    }
    // Consecutive requests start one further along (offset_i + i), so with random offsets they differ.
    std::set<std::string> distinct;
    for (const SampleRequest& sample : samples) distinct.insert(sample.prompt);
    EXPECT_GT(distinct.size(), 10u);
}

TEST(BenchRandomDataset, RangeRatioAndSeed) {
    const CharTokenizer tokenizer;
    RandomDatasetOptions options;
    options.num_requests = 200;
    options.input_len = 100;
    options.output_len = 10;
    options.range_ratio = 0.5;
    const std::vector<SampleRequest> samples = sample_random(tokenizer, options);
    std::set<int> input_lens, output_lens;
    for (const SampleRequest& s : samples) {
        EXPECT_GE(s.prompt_len, 50);
        EXPECT_LE(s.prompt_len, 150);
        EXPECT_GE(s.expected_output_len, 5);
        EXPECT_LE(s.expected_output_len, 15);
        input_lens.insert(s.prompt_len);
        output_lens.insert(s.expected_output_len);
    }
    EXPECT_GT(input_lens.size(), 30u);
    EXPECT_EQ(output_lens.size(), 11u);  // every value of [5, 15] among 200 draws
    EXPECT_EQ(sample_random(tokenizer, options)[3].prompt, samples[3].prompt);
    options.seed = 1;
    EXPECT_NE(sample_random(tokenizer, options)[3].prompt, samples[3].prompt);
    options.range_ratio = 1.0;
    EXPECT_THROW(sample_random(tokenizer, options), k2::Error);
    options.range_ratio = 0.0;
    options.input_len = 0;
    EXPECT_THROW(sample_random(tokenizer, options), k2::Error);
    // Output length never drops below 1.
    options.input_len = 30;
    options.output_len = 1;
    options.range_ratio = 0.9;
    for (const SampleRequest& s : sample_random(tokenizer, options)) EXPECT_GE(s.expected_output_len, 1);
}

std::filesystem::path write_temp(const std::string& name, const std::string& text) {
    const std::filesystem::path path = std::filesystem::temp_directory_path() / name;
    std::ofstream(path) << text;
    return path;
}

TEST(BenchUtf8, ReplacesLikePythonDecodeReplace) {
    // Expected strings from Python: bytes.decode("utf-8", "replace").encode("utf-8").
    const std::string r = "\xef\xbf\xbd";
    EXPECT_EQ(utf8_replace_invalid("ab\xff" "c"), "ab" + r + "c");
    EXPECT_EQ(utf8_replace_invalid("\xe2\x82"), r);
    EXPECT_EQ(utf8_replace_invalid("\xe2\x82\xac"), "\xe2\x82\xac");
    EXPECT_EQ(utf8_replace_invalid("\xed\xa0\x80x"), r + r + r + "x");
    EXPECT_EQ(utf8_replace_invalid("\xf0\x9f\x98"), r);
    EXPECT_EQ(utf8_replace_invalid("\xf0\x9f\x98\x80"), "\xf0\x9f\x98\x80");
    EXPECT_EQ(utf8_replace_invalid("\xc0\xaf"), r + r);
    EXPECT_EQ(utf8_replace_invalid("\xe0\x80\xaf"), r + r + r);
    EXPECT_EQ(utf8_replace_invalid("\xf4\x90\x80\x80"), r + r + r + r);
    EXPECT_EQ(utf8_replace_invalid("a\xe2\x82" "b"), "a" + r + "b");
}

TEST(BenchFileDatasets, ShareGptFiltersAndOversamples) {
    const CharTokenizer tokenizer;
    const std::filesystem::path path = write_temp("k2_bench_sharegpt.json", R"([
        {"conversations": [{"from": "human", "value": "abcdef"}, {"from": "gpt", "value": "ghijk"}]},
        {"conversations": [{"from": "human", "value": "abc"}, {"from": "gpt", "value": "ghijk"}]},
        {"conversations": [{"from": "human", "value": "abcdefgh"}]},
        {"conversations": [{"from": "human", "value": "zyxwv"}, {"from": "gpt", "value": "ab"}]}
    ])");
    // Only the first entry is valid: the second prompt is < 4 tokens, the third has one turn, the fourth's
    // reply is < 4 tokens.
    const std::vector<SampleRequest> samples = sample_sharegpt(path, tokenizer, 3, std::nullopt, 0);
    ASSERT_EQ(samples.size(), 3u);
    for (const SampleRequest& s : samples) {
        EXPECT_EQ(s.prompt, "abcdef");
        EXPECT_EQ(s.prompt_len, 6);
        EXPECT_EQ(s.expected_output_len, 5);
    }
    // A fixed output length lifts the minimum-output check.
    const std::vector<SampleRequest> fixed = sample_sharegpt(path, tokenizer, 2, 9, 0);
    std::set<std::string> prompts;
    for (const SampleRequest& s : fixed) {
        prompts.insert(s.prompt);
        EXPECT_EQ(s.expected_output_len, 9);
    }
    EXPECT_EQ(prompts, (std::set<std::string>{"abcdef", "zyxwv"}));
    EXPECT_THROW(sample_sharegpt("/nonexistent.json", tokenizer, 1, std::nullopt, 0), k2::Error);
}

// Found by fuzz_bench_dataset: a non-string "value" escaped as nlohmann's type_error instead of a k2::Error
// naming the file.
TEST(BenchFileDatasets, ShareGptNonStringValueIsAnErrorNamingTheFile) {
    const CharTokenizer tokenizer;
    for (const char* turns : {R"([{"from": "human", "value": "abcdef"}, {"from": "gpt", "value": 42}])",
                              R"([{"from": "human", "value": ["abcdef"]}, {"from": "gpt", "value": "ghijk"}])",
                              R"(["abcdef", "ghijk"])"}) {
        const std::filesystem::path path =
            write_temp("k2_bench_sharegpt_bad.json", fmt::format(R"([{{"conversations": {}}}])", turns));
        try {
            sample_sharegpt(path, tokenizer, 1, std::nullopt, 0);
            FAIL() << "expected an error for " << turns;
        } catch (const k2::Error& e) {
            EXPECT_NE(e.message().find("k2_bench_sharegpt_bad.json"), std::string::npos) << e.message();
        }
    }
}

TEST(BenchFileDatasets, CustomJsonl) {
    const CharTokenizer tokenizer;
    const std::filesystem::path path =
        write_temp("k2_bench_custom.jsonl", "{\"prompt\": \"abc\"}\n\n{\"prompt\": \"defgh\"}\n");
    const std::vector<SampleRequest> raw = sample_custom(path, tokenizer, 2, 11, true, 0);
    std::set<std::string> prompts;
    for (const SampleRequest& s : raw) {
        prompts.insert(s.prompt);
        EXPECT_EQ(s.prompt_len, static_cast<int>(s.prompt.size()));
        EXPECT_EQ(s.expected_output_len, 11);
    }
    EXPECT_EQ(prompts, (std::set<std::string>{"abc", "defgh"}));
    const std::vector<SampleRequest> templated = sample_custom(path, tokenizer, 1, 11, false, 0);
    ASSERT_EQ(templated.size(), 1u);
    EXPECT_EQ(templated[0].prompt.front(), 'u');
    const std::filesystem::path bad = write_temp("k2_bench_bad.jsonl", "{\"text\": \"abc\"}\n");
    try {
        sample_custom(bad, tokenizer, 1, 1, true, 0);
        FAIL() << "expected an error";
    } catch (const k2::Error& e) {
        EXPECT_NE(e.message().find("k2_bench_bad.jsonl:1"), std::string::npos) << e.message();
    }
}

#ifdef K2_BENCH_TEST_TOKENIZER
// With Kimi-K2's real tokenizer: every prompt re-encodes to exactly its recorded length, and the lengths hit
// their targets (decode -> re-encode is not the identity for BPE, which is what the retry loop fixes).
TEST(BenchRandomDataset, RealTokenizerPromptsReencodeToTheirLength) {
    const std::unique_ptr<PromptTokenizer> tokenizer = load_prompt_tokenizer(fixture_path("tiny-kimi-k2"));
    RandomDatasetOptions options;
    options.num_requests = 16;
    options.input_len = 200;
    options.output_len = 32;
    const std::vector<SampleRequest> samples = sample_random(*tokenizer, options);
    int on_target = 0;
    for (const SampleRequest& s : samples) {
        EXPECT_EQ(utf8_replace_invalid(s.prompt), s.prompt);  // valid UTF-8, sendable as JSON
        EXPECT_EQ(static_cast<int>(tokenizer->encode(s.prompt).size()), s.prompt_len);
        on_target += s.prompt_len == 200 ? 1 : 0;
    }
    EXPECT_GE(on_target, 14);
}
#endif

}  // namespace
}  // namespace k2::bench

// Benchmark prompts of `k2 bench serve`: random (token-exact synthetic prompts, reference/vllm.md §4.2),
// sharegpt (conversation JSON) and custom (JSONL with a "prompt" per line).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace k2::bench {

// What the datasets need from a tokenizer; k2::Tokenizer behind it in the program, a fake in unit tests.
class PromptTokenizer {
public:
    virtual ~PromptTokenizer() = default;
    virtual std::vector<int32_t> encode(std::string_view text) const = 0;  // no BOS/EOS added
    virtual std::string decode(std::span<const int32_t> ids) const = 0;    // special tokens kept as text
    virtual int32_t vocab_size() const = 0;
    virtual bool is_special(int32_t id) const = 0;
    // A single user message with the generation prompt, as the server would render it.
    virtual std::string apply_chat_template(const nlohmann::json& messages) const = 0;
};

// Python's bytes.decode("utf-8", "replace") re-encoded: each maximal invalid subpart becomes U+FFFD. Decoded
// random token runs are often not valid UTF-8, and HF's decode (hence vLLM's prompt) is this replacement.
std::string utf8_replace_invalid(std::string_view bytes);

// Loads k2::Tokenizer from a model directory (throws k2::Error when this build has no tokenizer).
std::unique_ptr<PromptTokenizer> load_prompt_tokenizer(const std::filesystem::path& model_dir);

struct SampleRequest {
    std::string prompt;
    int prompt_len = 0;
    int expected_output_len = 0;
};

struct RandomDatasetOptions {
    int num_requests = 1000;
    int input_len = 1024;
    int output_len = 128;
    double range_ratio = 0.0;
    int prefix_len = 0;
    uint64_t seed = 0;
};

// vLLM's RandomDataset: cyclic runs of non-special ids from a random offset after a shared random prefix,
// decoded and re-encoded (up to 10 times) until the prompt is exactly the target length.
// Draws come from numpy.random.default_rng(seed) in vLLM's order (numpy_random.h), so a seed gives vLLM's lengths
// and offsets.
std::vector<SampleRequest> sample_random(const PromptTokenizer& tokenizer, const RandomDatasetOptions& options);

// vLLM's ShareGPTDataset: entries with >= 2 turns, shuffled by seed; prompt = turn 0, output length = turn 1's
// token count (or output_len), keeping 4 <= prompt <= 1024 and prompt + output <= 2048; oversampled if short.
std::vector<SampleRequest> sample_sharegpt(const std::filesystem::path& path, const PromptTokenizer& tokenizer,
                                           int num_requests, std::optional<int> output_len, uint64_t seed);

// vLLM's CustomDataset: one {"prompt": ...} JSON per line, shuffled by seed, chat template applied unless
// skip_chat_template; every request asks for output_len tokens.
std::vector<SampleRequest> sample_custom(const std::filesystem::path& path, const PromptTokenizer& tokenizer,
                                         int num_requests, int output_len, bool skip_chat_template, uint64_t seed);

}  // namespace k2::bench

#include "bench/dataset.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>

#include "bench/numpy_random.h"
#include "core/error.h"
#include "core/log.h"

namespace k2::bench {

namespace {

// Uniform integer in [low, high] (NumPy's rng.integers(low, high + 1)).
int64_t draw(std::mt19937_64& rng, int64_t low, int64_t high) {
    return std::uniform_int_distribution<int64_t>(low, high)(rng);
}

struct DecodedPrompt {
    std::string text;
    int num_tokens = 0;
    int mismatch = 0;  // final length - target (0 when it converged)
};

// vLLM's gen_prompt_decode_to_target_len: decode, re-encode, then truncate or pad with random ids and retry,
// because decode -> encode is not the identity (BPE merges across the joined text).
DecodedPrompt decode_to_target_len(const PromptTokenizer& tokenizer, std::vector<int32_t> tokens, int target_len,
                                   NumpyGenerator& rng) {
    constexpr int kMaxRetry = 10;
    DecodedPrompt result;
    for (int retries_left = kMaxRetry;; --retries_left) {
        result.text = tokenizer.decode(tokens);
        tokens = tokenizer.encode(result.text);
        const auto num_tokens = static_cast<int>(tokens.size());
        if (retries_left <= 0 || num_tokens == target_len) {
            result.num_tokens = num_tokens;
            result.mismatch = num_tokens - target_len;
            return result;
        }
        if (num_tokens < target_len) {
            for (int i = num_tokens; i < target_len; ++i) {
                tokens.push_back(static_cast<int32_t>(rng.integers(0, tokenizer.vocab_size())));
            }
        } else {
            tokens.resize(static_cast<size_t>(target_len));
        }
    }
}

// Keeps the first num_requests; when there are fewer, appends random picks (vLLM's maybe_oversample_requests).
void fit_to_count(std::vector<SampleRequest>& samples, int num_requests, uint64_t seed, const std::string& name) {
    if (samples.size() > static_cast<size_t>(num_requests)) {
        samples.resize(static_cast<size_t>(num_requests));
    }
    if (samples.empty() || samples.size() == static_cast<size_t>(num_requests)) {
        K2_CHECK(!samples.empty(), "{}: no usable prompts", name);
        return;
    }
    K2_INFO("{}: oversampling {} prompts to {}", name, samples.size(), num_requests);
    std::mt19937_64 rng(seed);
    const int64_t available = static_cast<int64_t>(samples.size());
    while (samples.size() < static_cast<size_t>(num_requests)) {
        samples.push_back(samples[static_cast<size_t>(draw(rng, 0, available - 1))]);
    }
}

// Length of the valid UTF-8 prefix of a sequence starting at bytes[0] (Unicode's "maximal subpart"), and
// whether it is a complete character.
std::pair<size_t, bool> utf8_sequence(std::string_view bytes) {
    const auto b0 = static_cast<unsigned char>(bytes[0]);
    if (b0 < 0x80) return {1, true};
    size_t need = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 3;
        lo = b0 == 0xE0 ? 0xA0 : 0x80;
        hi = b0 == 0xED ? 0x9F : 0xBF;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 4;
        lo = b0 == 0xF0 ? 0x90 : 0x80;
        hi = b0 == 0xF4 ? 0x8F : 0xBF;
    } else {
        return {1, false};
    }
    for (size_t i = 1; i < need; ++i) {
        if (i >= bytes.size()) return {i, false};
        const auto b = static_cast<unsigned char>(bytes[i]);
        const bool ok = i == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
        if (!ok) return {i, false};
    }
    return {need, true};
}

}  // namespace

std::string utf8_replace_invalid(std::string_view bytes) {
    std::string out;
    out.reserve(bytes.size());
    while (!bytes.empty()) {
        const auto [len, complete] = utf8_sequence(bytes);
        out.append(complete ? bytes.substr(0, len) : std::string_view("\xEF\xBF\xBD"));
        bytes.remove_prefix(len);
    }
    return out;
}

std::vector<SampleRequest> sample_random(const PromptTokenizer& tokenizer, const RandomDatasetOptions& options) {
    const double r = options.range_ratio;
    K2_CHECK(r >= 0.0 && r < 1.0, "--random-range-ratio must be in [0, 1), got {}", r);
    K2_CHECK(options.input_len >= 0 && options.output_len >= 0 && options.prefix_len >= 0,
             "--random-input-len/--random-output-len/--random-prefix-len must not be negative");
    // Kimi's tokenizer adds no special tokens to a plain encode, so real_input_len = input_len.
    const int real_input_len = options.input_len;
    const auto input_low = static_cast<int64_t>(std::floor(real_input_len * (1.0 - r)));
    const auto input_high = static_cast<int64_t>(std::ceil(real_input_len * (1.0 + r)));
    const auto output_low = std::max<int64_t>(1, static_cast<int64_t>(std::floor(options.output_len * (1.0 - r))));
    const auto output_high = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(options.output_len * (1.0 + r))));
    K2_CHECK(options.prefix_len + input_low >= 1,
             "--random-input-len: a prompt would have no tokens (prefix {} + min input {})", options.prefix_len,
             input_low);
    K2_INFO("Sampling input_len from [{}, {}] and output_len from [{}, {}]", input_low, input_high, output_low,
            output_high);

    std::vector<int32_t> allowed;
    for (int32_t id = 0; id < tokenizer.vocab_size(); ++id) {
        if (!tokenizer.is_special(id)) {
            allowed.push_back(id);
        }
    }
    K2_CHECK(!allowed.empty(), "tokenizer has no non-special tokens");
    const auto num_allowed = static_cast<int64_t>(allowed.size());

    // vLLM's draw order from one default_rng(seed): all input lengths, all output lengths, all offsets, the prefix,
    // then the padding ids of each re-encode retry.
    NumpyGenerator rng(options.seed);
    const auto n = static_cast<size_t>(options.num_requests);
    std::vector<int64_t> input_lens(n), output_lens(n), offsets(n);
    for (auto& len : input_lens) len = rng.integers(input_low, input_high + 1);
    for (auto& len : output_lens) len = rng.integers(output_low, output_high + 1);
    for (auto& offset : offsets) offset = rng.integers(0, tokenizer.vocab_size());
    std::vector<int32_t> prefix;
    for (int i = 0; i < options.prefix_len; ++i) {
        prefix.push_back(allowed[static_cast<size_t>(rng.integers(0, num_allowed))]);
    }

    std::vector<SampleRequest> samples;
    int64_t total_mismatch = 0;
    for (size_t i = 0; i < n; ++i) {
        std::vector<int32_t> tokens = prefix;
        for (int64_t j = 0; j < input_lens[i]; ++j) {
            tokens.push_back(allowed[static_cast<size_t>((offsets[i] + static_cast<int64_t>(i) + j) % num_allowed)]);
        }
        const int target_len = options.prefix_len + static_cast<int>(input_lens[i]);
        DecodedPrompt prompt = decode_to_target_len(tokenizer, std::move(tokens), target_len, rng);
        total_mismatch += prompt.mismatch;
        samples.push_back({std::move(prompt.text), prompt.num_tokens, static_cast<int>(output_lens[i])});
    }
    if (total_mismatch != 0) {
        K2_WARN("random dataset: prompts differ from their target lengths by {} tokens in total after re-encoding",
                total_mismatch);
    }
    return samples;
}

std::vector<SampleRequest> sample_sharegpt(const std::filesystem::path& path, const PromptTokenizer& tokenizer,
                                           int num_requests, std::optional<int> output_len, uint64_t seed) {
    std::ifstream file(path);
    K2_CHECK(file.good(), "--dataset-path: cannot open {}", path.string());
    nlohmann::json data;
    try {
        data = nlohmann::json::parse(file);
    } catch (const nlohmann::json::exception& e) {
        K2_FAIL("--dataset-path: {} is not valid JSON: {}", path.string(), e.what());
    }
    K2_CHECK(data.is_array(), "--dataset-path: {} must hold a JSON array of conversations", path.string());
    std::vector<const nlohmann::json*> entries;
    for (const nlohmann::json& entry : data) {
        if (entry.is_object() && entry.contains("conversations") && entry["conversations"].is_array() &&
            entry["conversations"].size() >= 2) {
            entries.push_back(&entry);
        }
    }
    std::shuffle(entries.begin(), entries.end(), std::mt19937_64(seed));
    std::vector<SampleRequest> samples;
    for (const nlohmann::json* entry : entries) {
        if (samples.size() >= static_cast<size_t>(num_requests)) {
            break;
        }
        const nlohmann::json& turns = (*entry)["conversations"];
        for (const nlohmann::json* turn : {&turns[0], &turns[1]}) {
            K2_CHECK(turn->is_object() && turn->contains("value") && (*turn)["value"].is_string(),
                     "--dataset-path: {}: a conversation turn has no string \"value\"", path.string());
        }
        const std::string prompt = turns[0]["value"].get<std::string>();
        const auto prompt_len = static_cast<int>(tokenizer.encode(prompt).size());
        const int new_output_len =
            output_len ? *output_len : static_cast<int>(tokenizer.encode(turns[1]["value"].get<std::string>()).size());
        const bool too_short = prompt_len < 4 || (!output_len && new_output_len < 4);
        const bool too_long = prompt_len > 1024 || prompt_len + new_output_len > 2048;
        if (!too_short && !too_long) {
            samples.push_back({prompt, prompt_len, new_output_len});
        }
    }
    fit_to_count(samples, num_requests, seed, "sharegpt dataset " + path.string());
    return samples;
}

std::vector<SampleRequest> sample_custom(const std::filesystem::path& path, const PromptTokenizer& tokenizer,
                                         int num_requests, int output_len, bool skip_chat_template, uint64_t seed) {
    K2_CHECK(path.extension() == ".jsonl", "--dataset-path: {}: the custom dataset must be a .jsonl file",
             path.string());
    std::ifstream file(path);
    K2_CHECK(file.good(), "--dataset-path: cannot open {}", path.string());
    std::vector<std::string> prompts;
    std::string line;
    for (int line_no = 1; std::getline(file, line); ++line_no) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) {
            continue;
        }
        nlohmann::json row;
        try {
            row = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
            K2_FAIL("--dataset-path: {}:{}: invalid JSON: {}", path.string(), line_no, e.what());
        }
        K2_CHECK(row.is_object() && row.contains("prompt") && row["prompt"].is_string(),
                 "--dataset-path: {}:{}: each line must be an object with a string \"prompt\"", path.string(), line_no);
        prompts.push_back(row["prompt"].get<std::string>());
    }
    std::shuffle(prompts.begin(), prompts.end(), std::mt19937_64(seed));
    std::vector<SampleRequest> samples;
    for (std::string& prompt : prompts) {
        if (samples.size() >= static_cast<size_t>(num_requests)) {
            break;
        }
        if (!skip_chat_template) {
            prompt = tokenizer.apply_chat_template(nlohmann::json::array({{{"role", "user"}, {"content", prompt}}}));
        }
        const auto prompt_len = static_cast<int>(tokenizer.encode(prompt).size());
        samples.push_back({std::move(prompt), prompt_len, output_len});
    }
    fit_to_count(samples, num_requests, seed, "custom dataset " + path.string());
    return samples;
}

}  // namespace k2::bench

// libFuzzer target: `k2 bench serve` dataset files, and utf8_replace_invalid on the raw bytes. The first
// byte picks the loader (sharegpt JSON or custom JSONL) and its options; the rest is the file's content,
// written to a temporary file because the loaders take a path (--dataset-path). A bad file must give a
// k2::Error naming it; anything else escaping, a crash or a dataset of the wrong size is a bug.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "bench/dataset.h"
#include "core/error.h"
#include "core/log.h"

namespace {

// Deterministic stand-in for the model's tokenizer: one token per space-separated word.
class WordTokenizer : public k2::bench::PromptTokenizer {
public:
    std::vector<int32_t> encode(std::string_view text) const override {
        std::vector<int32_t> ids;
        size_t pos = 0;
        while (pos < text.size()) {
            const size_t end = std::min(text.find(' ', pos), text.size());
            if (end > pos) {
                ids.push_back(static_cast<int32_t>(std::hash<std::string_view>{}(text.substr(pos, end - pos)) % 1000));
            }
            pos = end + 1;
        }
        return ids;
    }
    std::string decode(std::span<const int32_t> ids) const override {
        std::string text;
        for (int32_t id : ids)
            text += "w" + std::to_string(id) + " ";
        return text;
    }
    int32_t vocab_size() const override { return 1000; }
    bool is_special(int32_t id) const override { return id == 0; }
    std::string apply_chat_template(const nlohmann::json& messages) const override {
        return "<user> " + messages.at(0).at("content").get<std::string>() + " <assistant>";
    }
};

void require(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "fuzz_bench_dataset: violated: %s\n", what);
        std::abort();
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const WordTokenizer tokenizer;
    static const std::filesystem::path dir = std::filesystem::temp_directory_path();
    static const std::string stem = "k2_fuzz_dataset_" + std::to_string(::getpid());
    static const struct RemoveAtExit {
        ~RemoveAtExit() {
            std::error_code ignored;
            std::filesystem::remove(dir / (stem + ".json"), ignored);
            std::filesystem::remove(dir / (stem + ".jsonl"), ignored);
        }
    } remove_at_exit;
    static const bool quiet = (k2::set_log_level(k2::LogLevel::WARNING), true);  // no "oversampling" lines
    (void)quiet;
    if (size == 0) {
        return 0;
    }
    // The random dataset's decode step: the replacement must give valid UTF-8 and be idempotent.
    const std::string replaced = k2::bench::utf8_replace_invalid({reinterpret_cast<const char*>(data), size});
    require(k2::bench::utf8_replace_invalid(replaced) == replaced, "utf8_replace_invalid is idempotent");
    try {
        (void)nlohmann::json(replaced).dump();  // the strict dump throws on invalid UTF-8
    } catch (const nlohmann::json::type_error&) {
        require(false, "utf8_replace_invalid gives valid UTF-8");
    }
    const uint8_t options = data[0];
    const bool sharegpt = (options & 1) == 0;
    const int num_requests = 1 + (options >> 1 & 7);  // 1..8
    const std::filesystem::path path = dir / (stem + (sharegpt ? ".json" : ".jsonl"));
    {
        std::ofstream file(path, std::ios::binary | std::ios::trunc);
        file.write(reinterpret_cast<const char*>(data) + 1, static_cast<std::streamsize>(size - 1));
        require(file.good(), "the temporary dataset file is written");
    }
    try {
        const std::vector<k2::bench::SampleRequest> samples =
            sharegpt ? k2::bench::sample_sharegpt(path, tokenizer, num_requests,
                                                  (options & 16) ? std::optional<int>(64) : std::nullopt, options)
                     : k2::bench::sample_custom(path, tokenizer, num_requests, 32, (options & 16) != 0, options);
        require(samples.size() == static_cast<size_t>(num_requests), "a dataset has exactly num_requests prompts");
        for (const k2::bench::SampleRequest& s : samples) {
            require(s.prompt_len >= 0 && s.expected_output_len >= 0, "non-negative lengths");
        }
    } catch (const k2::Error& e) {
        require(std::string_view(e.what()).find("--dataset-path") != std::string_view::npos ||
                    std::string_view(e.what()).find(path.string()) != std::string_view::npos,
                "a dataset error names --dataset-path or the file");
    }
    return 0;
}

// The datasets' PromptTokenizer over k2::Tokenizer. Built against the tokenizer library when the tree has
// it (K2_BENCH_HAVE_TOKENIZER); otherwise loading fails with a clear message.
#include "bench/dataset.h"
#include "core/error.h"

#ifdef K2_BENCH_HAVE_TOKENIZER
#include "tokenizer/tokenizer.h"
#endif

namespace k2::bench {

#ifdef K2_BENCH_HAVE_TOKENIZER
namespace {

class K2PromptTokenizer final : public PromptTokenizer {
public:
    explicit K2PromptTokenizer(std::shared_ptr<const Tokenizer> tokenizer) : m_tokenizer(std::move(tokenizer)) {}

    // Special-token text in a prompt is parsed as the special token, as the server's tokenizer does.
    std::vector<int32_t> encode(std::string_view text) const override { return m_tokenizer->encode(text, true); }
    // As HF's decode: invalid UTF-8 (a run cut inside a character) becomes U+FFFD, so prompts are valid text.
    std::string decode(std::span<const int32_t> ids) const override {
        return utf8_replace_invalid(m_tokenizer->decode(ids, false));
    }
    int32_t vocab_size() const override { return m_tokenizer->vocab_size(); }
    bool is_special(int32_t id) const override { return m_tokenizer->is_special(id); }
    std::string apply_chat_template(const nlohmann::json& messages) const override {
        return m_tokenizer->apply_chat_template({{"messages", messages}, {"add_generation_prompt", true}});
    }

private:
    std::shared_ptr<const Tokenizer> m_tokenizer;
};

}  // namespace

std::unique_ptr<PromptTokenizer> load_prompt_tokenizer(const std::filesystem::path& model_dir) {
    return std::make_unique<K2PromptTokenizer>(Tokenizer::load(model_dir));
}
#else
std::unique_ptr<PromptTokenizer> load_prompt_tokenizer(const std::filesystem::path& model_dir) {
    K2_FAIL("--tokenizer {}: this k2 build has no tokenizer library", model_dir.string());
}
#endif

}  // namespace k2::bench

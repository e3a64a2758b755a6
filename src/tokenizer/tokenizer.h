// Tokenizer: Kimi-K2's tiktoken BPE (ranks from tiktoken.model, a PCRE2 pre-tokenizer, 256 reserved special
// ids after the base vocabulary) plus the checkpoint's chat template, rendered by an embedded Jinja subset.
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

namespace k2 {

class BpeCore;
class ChatTemplate;

class Tokenizer {
public:
    // Loads tiktoken.model + tokenizer_config.json (+ chat_template.jinja, generation_config.json,
    // config.json for eos ids) from a model directory.
    static std::shared_ptr<const Tokenizer> load(const std::filesystem::path& model_dir);
    // Same, with an explicit pre-tokenizer: "kimi", "cl100k", "o200k" or a PCRE2 regex (empty: the
    // checkpoint's `pat_str` in tokenizer_config.json if any, else Kimi's).
    static std::shared_ptr<const Tokenizer> load(const std::filesystem::path& model_dir, const std::string& pattern);

    std::vector<int32_t> encode(std::string_view text, bool allow_special = true) const;
    std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;
    const std::string& token_bytes(int32_t id) const;  // raw bytes of a base token, the text of a special one
    bool is_special(int32_t id) const;  // added_tokens_decoder "special" flag (tool-call tokens: false)
    int32_t vocab_size() const;
    std::optional<int32_t> token_to_id(std::string_view token) const;  // exact single-token lookup
    std::vector<int32_t> stop_token_ids() const;  // eos of config/generation_config/tokenizer, incl. <|im_end|>
    // request = {"messages": [...], "tools"?: [...], "add_generation_prompt"?: bool, ...}
    std::string apply_chat_template(const nlohmann::json& request) const;

    // Additions beyond the pinned interface.
    int32_t num_base_tokens() const;           // ids below this are BPE tokens, the rest added/reserved
    bool is_added_token(int32_t id) const;     // one of the 256 ids after the base vocabulary
    bool has_chat_template() const;
    // nlohmann::json sorts object keys, so `tools | tojson` would not match Python's insertion order;
    // callers that parse the request themselves should parse it as ordered_json and use this overload.
    std::string apply_chat_template_ordered(const nlohmann::ordered_json& request) const;
    // Renders an explicit template source (e.g. `k2 chat-template --template FILE`) with this tokenizer's
    // special-token variables.
    std::string apply_chat_template(const nlohmann::ordered_json& request, const std::string& template_source,
                                    const std::string& template_name) const;

    Tokenizer();
    ~Tokenizer();
    Tokenizer(const Tokenizer&) = delete;
    Tokenizer& operator=(const Tokenizer&) = delete;

private:
    struct ModelFiles;  // config.json, tokenizer_config.json, generation_config.json of a model folder
    void load_added_tokens(const ModelFiles& files);
    void load_stop_ids(const ModelFiles& files);
    void load_chat_template(const ModelFiles& files);

    struct Impl;
    std::unique_ptr<Impl> m_impl;
};

// The named pre-tokenizer patterns ("kimi", "cl100k", "o200k"); anything else is returned unchanged.
std::string resolve_pretokenizer_pattern(const std::string& name_or_regex);

}  // namespace k2

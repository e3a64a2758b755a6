#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "core/log.h"
#include "tokenizer/bpe.h"
#include "tokenizer/default_chat_template.h"
#include "tokenizer/jinja.h"
#include "tokenizer/pretokenizer.h"

namespace k2 {
namespace {

constexpr int32_t kNumReservedSpecial = 256;

nlohmann::ordered_json read_json_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    K2_CHECK(in.good(), "{}: cannot open", path.string());
    try {
        return nlohmann::ordered_json::parse(in);
    } catch (const nlohmann::json::exception& e) {
        K2_FAIL("{}: invalid JSON: {}", path.string(), e.what());
    }
}

std::string read_text_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    K2_CHECK(in.good(), "{}: cannot open", path.string());
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// A special token's text from a tokenizer_config value: a string or an AddedToken dict {"content": ...}.
std::optional<std::string> token_text(const nlohmann::ordered_json& value) {
    if (value.is_string()) return value.get<std::string>();
    if (value.is_object() && value.contains("content") && value["content"].is_string()) {
        return value["content"].get<std::string>();
    }
    return std::nullopt;
}

void append_ids(const nlohmann::ordered_json& value, std::vector<int32_t>& out) {
    if (value.is_number_integer()) out.push_back(value.get<int32_t>());
    if (value.is_array()) {
        for (const auto& v : value) {
            if (v.is_number_integer()) out.push_back(v.get<int32_t>());
        }
    }
}

}  // namespace

std::string resolve_pretokenizer_pattern(const std::string& name_or_regex) {
    if (name_or_regex == "kimi") return kKimiPattern;
    if (name_or_regex == "cl100k") return kCl100kPattern;
    if (name_or_regex == "o200k") return kO200kPattern;
    return name_or_regex;
}

struct Tokenizer::Impl {
    BpeRanks ranks;
    std::unique_ptr<PreTokenizer> pretokenizer;
    int32_t num_base = 0;
    int32_t vocab_size = 0;
    std::vector<std::string> added_text;  // [kNumReservedSpecial]: text of id num_base + k
    std::vector<bool> added_special;      // [kNumReservedSpecial]
    std::unordered_map<std::string, int32_t> added_by_text;
    // Special-token texts grouped by first byte, longest first: the scan checks only bytes that start one.
    std::vector<std::pair<std::string, int32_t>> added_by_first[256];
    std::vector<int32_t> stop_ids;
    std::string chat_template_source;
    std::string chat_template_name;
    std::unique_ptr<jinja::Template> chat_template;
    nlohmann::ordered_json template_tokens = nlohmann::ordered_json::object();  // bos_token, eos_token, ...

    // Finds the leftmost special-token text in `text` at or after `from` (longest on ties).
    bool find_added(std::string_view text, size_t from, size_t& at, size_t& len, int32_t& id) const {
        for (size_t i = from; i < text.size(); ++i) {
            const auto& candidates = added_by_first[static_cast<uint8_t>(text[i])];
            for (const auto& [candidate, candidate_id] : candidates) {
                if (text.compare(i, candidate.size(), candidate) == 0) {
                    at = i;
                    len = candidate.size();
                    id = candidate_id;
                    return true;
                }
            }
        }
        return false;
    }

    void encode_ordinary(std::string_view text, std::vector<int32_t>& out) const {
        thread_local std::vector<uint64_t> scratch;
        pretokenizer->split(text, [&](std::string_view piece) { ranks.encode_piece(piece, out, scratch); });
    }
};

Tokenizer::Tokenizer() : m_impl(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;

std::shared_ptr<const Tokenizer> Tokenizer::load(const std::filesystem::path& model_dir) {
    return load(model_dir, "");
}

// The JSON files next to tiktoken.model; each is optional.
struct Tokenizer::ModelFiles {
    std::filesystem::path dir;
    nlohmann::ordered_json config = nlohmann::ordered_json::object();
    nlohmann::ordered_json tok_config = nlohmann::ordered_json::object();
    nlohmann::ordered_json gen_config = nlohmann::ordered_json::object();

    static ModelFiles read(const std::filesystem::path& dir) {
        ModelFiles files;
        files.dir = dir;
        auto read_if = [&](const char* name, nlohmann::ordered_json& into) {
            if (std::filesystem::exists(dir / name)) into = read_json_file(dir / name);
        };
        read_if("config.json", files.config);
        read_if("tokenizer_config.json", files.tok_config);
        read_if("generation_config.json", files.gen_config);
        return files;
    }
    std::string tok_config_path() const { return (dir / "tokenizer_config.json").string(); }
};

// The 256 ids after the base vocabulary: named by added_tokens_decoder, the rest reserved placeholders.
void Tokenizer::load_added_tokens(const ModelFiles& files) {
    Impl& impl = *m_impl;
    impl.added_text.resize(kNumReservedSpecial);
    impl.added_special.assign(kNumReservedSpecial, true);
    for (int32_t k = 0; k < kNumReservedSpecial; ++k) {
        impl.added_text[k] = fmt::format("<|reserved_token_{}|>", impl.num_base + k);
    }
    if (files.tok_config.contains("added_tokens_decoder")) {
        const auto& decoder = files.tok_config["added_tokens_decoder"];
        K2_CHECK(decoder.is_object(), "{}: added_tokens_decoder must be an object", files.tok_config_path());
        for (const auto& [key, value] : decoder.items()) {
            int64_t id = -1;
            try {
                id = std::stoll(key);
            } catch (const std::exception&) {
                K2_FAIL("{}: added_tokens_decoder key `{}` is not an id", files.tok_config_path(), key);
            }
            auto text = token_text(value);
            K2_CHECK(text.has_value() && !text->empty(), "{}: added_tokens_decoder[{}] has no content",
                     files.tok_config_path(), key);
            if (id >= 0 && id < impl.num_base) {
                K2_CHECK(impl.ranks.token_bytes(static_cast<int32_t>(id)) == *text,
                         "{}: added token {} `{}` overlaps the base vocabulary", files.tok_config_path(), id, *text);
                continue;
            }
            K2_CHECK(id >= impl.num_base && id < impl.num_base + kNumReservedSpecial,
                     "{}: added token {} is outside the {} reserved ids after the base vocabulary ({})",
                     files.tok_config_path(), id, kNumReservedSpecial, impl.num_base);
            auto k = static_cast<size_t>(id - impl.num_base);
            impl.added_text[k] = *text;
            const bool special_flag = !value.is_object() || !value.contains("special") || !value["special"].is_boolean() ||
                                      value["special"].get<bool>();
            impl.added_special[k] = special_flag;
        }
    }
    for (int32_t k = 0; k < kNumReservedSpecial; ++k) {
        const std::string& text = impl.added_text[k];
        impl.added_by_text.emplace(text, impl.num_base + k);
        impl.added_by_first[static_cast<uint8_t>(text[0])].emplace_back(text, impl.num_base + k);
    }
    for (auto& candidates : impl.added_by_first) {
        std::stable_sort(candidates.begin(), candidates.end(),
                         [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    }
    impl.vocab_size = impl.num_base + kNumReservedSpecial;
}

// Stop ids: eos of config.json, generation_config.json and tokenizer_config, plus <|im_end|>.
void Tokenizer::load_stop_ids(const ModelFiles& files) {
    Impl& impl = *m_impl;
    std::vector<int32_t> ids;
    append_ids(files.config.value("eos_token_id", nlohmann::ordered_json()), ids);
    append_ids(files.gen_config.value("eos_token_id", nlohmann::ordered_json()), ids);
    for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
        if (!files.tok_config.contains(key)) continue;
        auto text = token_text(files.tok_config[key]);
        if (!text) continue;
        impl.template_tokens[key] = *text;
        if (std::string_view(key) == "eos_token") {
            if (auto id = token_to_id(*text)) ids.push_back(*id);
        }
    }
    if (auto id = token_to_id("<|im_end|>")) ids.push_back(*id);
    for (int32_t id : ids) {
        if (std::find(impl.stop_ids.begin(), impl.stop_ids.end(), id) == impl.stop_ids.end()) impl.stop_ids.push_back(id);
    }
}

// Chat template: chat_template.jinja, else tokenizer_config's chat_template, else Kimi-K2's.
void Tokenizer::load_chat_template(const ModelFiles& files) {
    Impl& impl = *m_impl;
    if (std::filesystem::exists(files.dir / "chat_template.jinja")) {
        impl.chat_template_source = read_text_file(files.dir / "chat_template.jinja");
        impl.chat_template_name = (files.dir / "chat_template.jinja").string();
    } else if (files.tok_config.contains("chat_template") && files.tok_config["chat_template"].is_string()) {
        impl.chat_template_source = files.tok_config["chat_template"].get<std::string>();
        impl.chat_template_name = files.tok_config_path() + " chat_template";
    } else {
        impl.chat_template_source = kDefaultKimiChatTemplate;
        impl.chat_template_name = "<built-in Kimi-K2-Instruct-0905 template>";
    }
    impl.chat_template = std::make_unique<jinja::Template>(impl.chat_template_source, impl.chat_template_name);
}

std::shared_ptr<const Tokenizer> Tokenizer::load(const std::filesystem::path& model_dir, const std::string& pattern) {
    auto tokenizer = std::make_shared<Tokenizer>();
    Impl& impl = *tokenizer->m_impl;
    // A plain rank file (e.g. cl100k_base.tiktoken) is accepted too: no config, reserved specials only.
    const bool is_dir = std::filesystem::is_directory(model_dir);
    const std::filesystem::path ranks_path = is_dir ? model_dir / "tiktoken.model" : model_dir;
    K2_CHECK(std::filesystem::exists(ranks_path), "{}: no tiktoken.model (k2 supports tiktoken checkpoints only)",
             ranks_path.string());
    impl.ranks = BpeRanks::load(ranks_path);
    impl.num_base = impl.ranks.num_tokens();
    const ModelFiles files = is_dir ? ModelFiles::read(model_dir) : ModelFiles{};

    std::string pat = pattern;
    if (pat.empty() && files.tok_config.contains("pat_str") && files.tok_config["pat_str"].is_string()) {
        pat = files.tok_config["pat_str"].get<std::string>();
    }
    impl.pretokenizer = std::make_unique<PreTokenizer>(resolve_pretokenizer_pattern(pat.empty() ? "kimi" : pat));
    tokenizer->load_added_tokens(files);
    tokenizer->load_stop_ids(files);
    if (is_dir) tokenizer->load_chat_template(files);
    return tokenizer;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool allow_special) const {
    const Impl& impl = *m_impl;
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 4);
    if (!allow_special) {
        impl.encode_ordinary(text, out);
        return out;
    }
    size_t pos = 0;
    size_t at = 0, len = 0;
    int32_t id = 0;
    while (impl.find_added(text, pos, at, len, id)) {
        impl.encode_ordinary(text.substr(pos, at - pos), out);
        out.push_back(id);
        pos = at + len;
    }
    impl.encode_ordinary(text.substr(pos), out);
    return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
    std::string out;
    for (int32_t id : ids) {
        if (skip_special_tokens && is_special(id)) continue;
        out += token_bytes(id);
    }
    return out;
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
    const Impl& impl = *m_impl;
    K2_CHECK(id >= 0 && id < impl.vocab_size, "token id {} is out of range [0, {})", id, impl.vocab_size);
    if (id >= impl.num_base) return impl.added_text[static_cast<size_t>(id - impl.num_base)];
    const std::string& bytes = impl.ranks.token_bytes(id);
    K2_CHECK(!bytes.empty(), "token id {} is not in the BPE rank file", id);
    return bytes;
}

bool Tokenizer::is_special(int32_t id) const {
    const Impl& impl = *m_impl;
    return id >= impl.num_base && id < impl.vocab_size && impl.added_special[static_cast<size_t>(id - impl.num_base)];
}

bool Tokenizer::is_added_token(int32_t id) const { return id >= m_impl->num_base && id < m_impl->vocab_size; }

int32_t Tokenizer::vocab_size() const { return m_impl->vocab_size; }

int32_t Tokenizer::num_base_tokens() const { return m_impl->num_base; }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
    const Impl& impl = *m_impl;
    auto it = impl.added_by_text.find(std::string(token));
    if (it != impl.added_by_text.end()) return it->second;
    uint32_t rank = impl.ranks.rank(token);
    if (rank != BpeRanks::kNoRank) return static_cast<int32_t>(rank);
    return std::nullopt;
}

std::vector<int32_t> Tokenizer::stop_token_ids() const { return m_impl->stop_ids; }

bool Tokenizer::has_chat_template() const { return m_impl->chat_template != nullptr; }

namespace {

// The variables transformers passes to a chat template: messages, tools (None when absent),
// add_generation_prompt, the special-token strings, the request's other top-level keys and the entries of
// chat_template_kwargs.
template <typename Json>
nlohmann::ordered_json template_context(const Json& request, const nlohmann::ordered_json& tokens) {
    K2_CHECK(request.is_object(), "chat request must be a JSON object");
    K2_CHECK(request.contains("messages") && request["messages"].is_array(), "chat request: `messages` must be a list");
    nlohmann::ordered_json context = nlohmann::ordered_json::object();
    context["messages"] = nlohmann::ordered_json(request["messages"]);
    context["tools"] = request.contains("tools") ? nlohmann::ordered_json(request["tools"])
                                                 : nlohmann::ordered_json();
    context["add_generation_prompt"] = false;
    if (request.contains("add_generation_prompt")) {
        K2_CHECK(request["add_generation_prompt"].is_boolean(), "chat request: `add_generation_prompt` must be a bool");
        context["add_generation_prompt"] = request["add_generation_prompt"].template get<bool>();
    }
    for (const auto& [key, value] : tokens.items()) context[key] = value;
    // Other top-level keys are template variables too (transformers passes extra kwargs through).
    for (const auto& [key, value] : request.items()) {
        if (key == "messages" || key == "tools" || key == "add_generation_prompt" || key == "chat_template_kwargs") {
            continue;
        }
        context[key] = nlohmann::ordered_json(value);
    }
    if (request.contains("chat_template_kwargs") && request["chat_template_kwargs"].is_object()) {
        for (const auto& [key, value] : request["chat_template_kwargs"].items()) {
            context[key] = nlohmann::ordered_json(value);
        }
    }
    return context;
}

}  // namespace

std::string Tokenizer::apply_chat_template(const nlohmann::json& request) const {
    K2_CHECK(m_impl->chat_template != nullptr, "this tokenizer has no chat template");
    return m_impl->chat_template->render(template_context(request, m_impl->template_tokens));
}

std::string Tokenizer::apply_chat_template_ordered(const nlohmann::ordered_json& request) const {
    K2_CHECK(m_impl->chat_template != nullptr, "this tokenizer has no chat template");
    return m_impl->chat_template->render(template_context(request, m_impl->template_tokens));
}

std::string Tokenizer::apply_chat_template(const nlohmann::ordered_json& request, const std::string& template_source,
                                           const std::string& template_name) const {
    jinja::Template tmpl(template_source, template_name);
    return tmpl.render(template_context(request, m_impl->template_tokens));
}

}  // namespace k2

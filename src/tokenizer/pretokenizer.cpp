#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/pretokenizer.h"

#include <pcre2.h>

#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "core/error.h"

namespace k2 {

// Alternatives 2 and 3 of Kimi's pattern: `[X&&[^\p{Han}]]` becomes `(?:(?!\p{Han})[X])`.
const char* const kKimiPattern =
    R"([\p{Han}]+)"
    R"(|[^\r\n\p{L}\p{N}]?(?:(?!\p{Han})[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}])*(?:(?!\p{Han})[\p{Ll}\p{Lm}\p{Lo}\p{M}])+(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|[^\r\n\p{L}\p{N}]?(?:(?!\p{Han})[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}])+(?:(?!\p{Han})[\p{Ll}\p{Lm}\p{Lo}\p{M}])*(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|\p{N}{1,3})"
    R"(| ?[^\s\p{L}\p{N}]+[\r\n]*)"
    R"(|\s*[\r\n]+)"
    R"(|\s+(?!\S))"
    R"(|\s+)";

const char* const kCl100kPattern =
    R"('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s)";

const char* const kO200kPattern =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace {

// Rust's regex matches \p{Han} by the Script property, PCRE2 >= 10.40 by Script_Extensions (which puts
// e.g. U+3002 "。" in Han). Script names (longer than a general category's) get PCRE2's `sc:` prefix.
bool is_script_name(const std::string& name) {
    static const char* const kNotScripts[] = {"Any", "L&", "Xan", "Xps", "Xsp", "Xwd", "Xuc", "Letter", "Mark", "Number",
                                              "Punctuation", "Symbol", "Separator", "Other"};
    if (name.size() <= 2 || name.find(':') != std::string::npos || name.find('_') != std::string::npos) return false;
    for (const char* n : kNotScripts) {
        if (name == n) return false;
    }
    return true;
}

// Rust's regex (used by tiktoken) defines \s as the Unicode White_Space property; PCRE2's UCP \s also
// matches U+180E (it is in \h). Spell the White_Space set out so both engines split alike.
constexpr const char* kWhiteSpace = R"(\t-\r\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

std::string to_pcre2_whitespace(const std::string& pattern) {
    std::string out;
    out.reserve(pattern.size() + 64);
    int class_depth = 0;
    for (size_t i = 0; i < pattern.size(); ++i) {
        char c = pattern[i];
        if (c == '\\' && i + 1 < pattern.size()) {
            char n = pattern[i + 1];
            if (n == 's') {
                out += class_depth > 0 ? std::string(kWhiteSpace) : fmt::format("[{}]", kWhiteSpace);
            } else if (n == 'S' && class_depth == 0) {
                out += fmt::format("[^{}]", kWhiteSpace);
            } else if ((n == 'p' || n == 'P') && i + 2 < pattern.size() && pattern[i + 2] == '{') {
                size_t close = pattern.find('}', i + 3);
                std::string name = close == std::string::npos ? "" : pattern.substr(i + 3, close - i - 3);
                if (close == std::string::npos || !is_script_name(name)) {
                    out += c;
                    out += n;
                } else {
                    out += fmt::format("\\{}{{sc:{}}}", n, name);
                    i = close - 1;
                }
            } else {
                out += c;
                out += n;
            }
            ++i;
            continue;
        }
        if (c == '[') ++class_depth;
        if (c == ']' && class_depth > 0) --class_depth;
        out += c;
    }
    return out;
}

// Rust-regex class intersections of the form `[X&&[^Y]]` (as in Kimi's original pat_str) become
// `(?:(?![Y])[X])`; PCRE2 10.42 would otherwise read `&&[^Y]` as literal members of the class.
std::string rewrite_intersections(const std::string& pattern) {
    std::string out = pattern;
    for (size_t at = out.find("&&[^"); at != std::string::npos; at = out.find("&&[^", at)) {
        // The opening `[` of the outer class: the nearest unescaped `[` before `&&`.
        size_t open = std::string::npos;
        for (size_t k = at; k-- > 0;) {
            if (out[k] == '[' && (k == 0 || out[k - 1] != '\\')) {
                open = k;
                break;
            }
        }
        size_t close = out.find("]]", at);
        if (open == std::string::npos || close == std::string::npos) break;
        const std::string members = out.substr(open + 1, at - open - 1);
        const std::string excluded = out.substr(at + 4, close - at - 4);
        const std::string replacement = "(?:(?![" + excluded + "])[" + members + "])";
        out.replace(open, close + 2 - open, replacement);
        at = open + replacement.size();
    }
    return out;
}

}  // namespace

struct PreTokenizer::Impl {
    pcre2_code* code = nullptr;
    // Match data is per thread: PCRE2 match data is not shareable, the compiled code is. Impl owns every
    // thread's block; a one-entry thread_local cache keyed by a process-unique id (not the address, which
    // a later PreTokenizer may reuse) skips the lock on the hot path.
    const uint64_t id = next_id();
    mutable std::mutex mutex;
    mutable std::vector<std::pair<std::thread::id, pcre2_match_data*>> match_data;

    static uint64_t next_id() {
        static std::atomic<uint64_t> counter{0};
        return ++counter;
    }

    pcre2_match_data* data_for_this_thread() const {
        thread_local uint64_t cached_id = 0;
        thread_local pcre2_match_data* cached = nullptr;
        if (cached_id == id) return cached;
        std::lock_guard<std::mutex> lock(mutex);
        auto tid = std::this_thread::get_id();
        pcre2_match_data* found = nullptr;
        for (auto& [owner, md] : match_data) {
            if (owner == tid) found = md;
        }
        if (found == nullptr) {
            found = pcre2_match_data_create_from_pattern(code, nullptr);
            K2_CHECK(found != nullptr, "pre-tokenizer: out of memory for PCRE2 match data");
            match_data.emplace_back(tid, found);
        }
        cached_id = id;
        cached = found;
        return found;
    }

    ~Impl() {
        for (auto& entry : match_data) pcre2_match_data_free(entry.second);
        if (code != nullptr) pcre2_code_free(code);
    }
};

PreTokenizer::PreTokenizer(const std::string& pattern) : m_pattern(pattern), m_impl(std::make_unique<Impl>()) {
    std::string translated = to_pcre2_whitespace(rewrite_intersections(pattern));
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    m_impl->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                 PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | PCRE2_DOLLAR_ENDONLY,
                                 &error_code, &error_offset, nullptr);
    if (m_impl->code == nullptr) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(error_code, message, sizeof(message));
        K2_FAIL("pre-tokenizer pattern: {} at offset {}: {}", reinterpret_cast<const char*>(message), error_offset,
                pattern);
    }
    int jit = pcre2_jit_compile(m_impl->code, PCRE2_JIT_COMPLETE);
    K2_CHECK(jit == 0, "pre-tokenizer pattern: PCRE2 JIT compile failed ({})", jit);
}

PreTokenizer::~PreTokenizer() = default;

bool PreTokenizer::next_match(std::string_view text, size_t pos, size_t& begin, size_t& end) const {
    pcre2_match_data* md = m_impl->data_for_this_thread();
    int rc = pcre2_jit_match(m_impl->code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos, 0, md,
                             nullptr);
    if (rc < 0) {
        K2_CHECK(rc == PCRE2_ERROR_NOMATCH, "pre-tokenizer: PCRE2 match error {}", rc);
        return false;
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(md);
    begin = ovector[0];
    end = ovector[1];
    if (end <= begin) {
        // An empty match: take one UTF-8 character so the loop always advances.
        end = begin + 1;
        while (end < text.size() && (static_cast<uint8_t>(text[end]) & 0xC0) == 0x80) ++end;
        end = std::min(end, text.size());
        if (begin >= text.size()) return false;
    }
    return true;
}

}  // namespace k2

// Pre-tokenizer: splits text into pieces with a tiktoken-style regex compiled by PCRE2 (JIT, UTF + UCP).
// Kimi-K2's pattern uses Rust-regex class intersections (`[A&&[^\p{Han}]]`), which PCRE2 10.42 lacks;
// kKimiPattern is the same language written with a negative lookahead per character.
#pragma once

#include <memory>
#include <string>
#include <string_view>

namespace k2 {

// Kimi-K2's pat_str, rewritten for PCRE2.
extern const char* const kKimiPattern;
// tiktoken's cl100k_base and o200k_base patterns (PCRE2 understands them as written).
extern const char* const kCl100kPattern;
extern const char* const kO200kPattern;

class PreTokenizer {
public:
    explicit PreTokenizer(const std::string& pattern);
    ~PreTokenizer();
    PreTokenizer(const PreTokenizer&) = delete;
    PreTokenizer& operator=(const PreTokenizer&) = delete;

    const std::string& pattern() const { return m_pattern; }

    // Calls fn(piece) for every piece of `text` in order. Bytes no match covers (only possible for invalid
    // UTF-8 or a pattern that does not cover every character) are passed as pieces too, so the pieces
    // always concatenate to `text`. Lookarounds see only `text`, as in tiktoken where special tokens cut
    // the input before the regex runs.
    template <typename Fn>
    void split(std::string_view text, Fn&& fn) const {
        size_t pos = 0;
        while (pos < text.size()) {
            size_t begin = 0, end = 0;
            if (!next_match(text, pos, begin, end)) {
                fn(text.substr(pos));
                return;
            }
            if (begin > pos) fn(text.substr(pos, begin - pos));
            fn(text.substr(begin, end - begin));
            pos = end;
        }
    }

private:
    // Finds the first match at or after `pos`; an empty match is widened to one character.
    bool next_match(std::string_view text, size_t pos, size_t& begin, size_t& end) const;

    struct Impl;
    std::string m_pattern;
    std::unique_ptr<Impl> m_impl;
};

}  // namespace k2

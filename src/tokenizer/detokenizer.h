// Streaming detokenization: turns one token id at a time into text deltas that never end inside a UTF-8
// character, so a client can print each delta as it arrives.
#pragma once

#include <cstdint>
#include <string>

namespace k2 {

class Tokenizer;

class IncrementalDetokenizer {
public:
    IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens);
    std::string push(int32_t token_id);  // newly completed text; never ends inside a UTF-8 character
    std::string flush();                 // whatever is left (invalid bytes as U+FFFD, like Python's "replace")

private:
    const Tokenizer* m_tokenizer;
    bool m_skip_special_tokens;
    std::string m_pending;  // bytes of an incomplete UTF-8 sequence (at most 3 before the next delta)
};

}  // namespace k2

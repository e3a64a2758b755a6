#include "tokenizer/detokenizer.h"

#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace k2 {

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens)
    : m_tokenizer(&tokenizer), m_skip_special_tokens(skip_special_tokens) {}

// Only the held-back tail of an incomplete character (< 4 bytes) is re-examined, so each step costs
// O(bytes of the new token).
std::string IncrementalDetokenizer::push(int32_t token_id) {
    if (m_skip_special_tokens && m_tokenizer->is_special(token_id)) return {};
    m_pending += m_tokenizer->token_bytes(token_id);
    std::string delta;
    size_t consumed = utf8::decode_replace(m_pending, delta, /*final=*/false);
    m_pending.erase(0, consumed);
    return delta;
}

std::string IncrementalDetokenizer::flush() {
    std::string delta;
    utf8::decode_replace(m_pending, delta, /*final=*/true);
    m_pending.clear();
    return delta;
}

}  // namespace k2

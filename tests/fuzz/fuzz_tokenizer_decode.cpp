// libFuzzer target: decode arbitrary id sequences in one piece and through the incremental detokenizer;
// the deltas must be valid UTF-8 and concatenate to the replace-decoded full text.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../unit/test_paths.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace {

bool valid_utf8(const std::string& s) {
    std::string decoded;
    k2::utf8::decode_replace(s, decoded, /*final=*/true);
    return decoded == s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static auto tok = k2::Tokenizer::load(k2::fixture_path("tiny-kimi-k2"));
    if (size == 0) return 0;
    const bool skip_special = (data[0] & 1) != 0;
    std::vector<int32_t> ids;
    for (size_t i = 1; i + 2 <= size; i += 2) {
        uint16_t raw = 0;
        std::memcpy(&raw, data + i, 2);
        ids.push_back(static_cast<int32_t>(raw % static_cast<uint32_t>(tok->vocab_size())));
    }
    const std::string full = tok->decode(ids, skip_special);
    std::string expected;
    k2::utf8::decode_replace(full, expected, /*final=*/true);
    k2::IncrementalDetokenizer detok(*tok, skip_special);
    std::string joined;
    for (int32_t id : ids) {
        std::string delta = detok.push(id);
        if (!valid_utf8(delta)) std::abort();
        joined += delta;
    }
    joined += detok.flush();
    if (joined != expected) std::abort();
    return 0;
}

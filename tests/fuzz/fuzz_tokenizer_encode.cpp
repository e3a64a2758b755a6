// libFuzzer target: encode arbitrary bytes (with and without special-token recognition) with Kimi's
// pre-tokenizer (tiny vocabulary) and cl100k's; decode must give the input back exactly.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "../unit/test_paths.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static auto kimi = k2::Tokenizer::load(k2::fixture_path("tiny-kimi-k2"));
    static auto cl100k = k2::Tokenizer::load(k2::fixture_path("tokenizer/cl100k_base.tiktoken"), "cl100k");
    if (size == 0) return 0;
    const k2::Tokenizer& tok = (data[0] & 1) != 0 ? *cl100k : *kimi;
    const bool allow_special = (data[0] & 2) != 0;
    const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
    const auto ids = tok.encode(text, allow_special);
    for (int32_t id : ids) {
        if (id < 0 || id >= tok.vocab_size()) std::abort();
    }
    if (tok.decode(ids) != text) std::abort();
    return 0;
}

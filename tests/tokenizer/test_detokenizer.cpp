// Streaming: deltas concatenate to the full decode and never end inside a UTF-8 character.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "../unit/test_paths.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace k2 {
namespace {

// True when `s` is well-formed UTF-8 (so it cannot end inside a character).
bool valid_utf8(const std::string& s) {
    size_t i = 0;
    while (i < s.size()) {
        auto c = static_cast<unsigned char>(s[i]);
        size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
        if (len == 0 || i + len > s.size()) return false;
        for (size_t k = 1; k < len; ++k) {
            if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
        }
        i += len;
    }
    return true;
}

TEST(Detokenizer, CorpusDeltasConcatenateToDecode) {
    std::ifstream in(fixture_path("tokenizer/tokenizer_corpus.json"));
    auto corpus = nlohmann::json::parse(in);
    int split_chars = 0;
    for (const char* model : {"tokenizer/kimi-o200k", "tiny-kimi-k2"}) {
        auto tok = Tokenizer::load(fixture_path(model));
        for (const auto& item : corpus) {
            const std::string text = item.get<std::string>();
            auto ids = tok->encode(text);
            for (bool skip : {false, true}) {
                IncrementalDetokenizer detok(*tok, skip);
                std::string joined;
                for (int32_t id : ids) {
                    std::string delta = detok.push(id);
                    EXPECT_TRUE(valid_utf8(delta)) << "delta ends mid-character in: " << text;
                    if (!valid_utf8(tok->token_bytes(id))) ++split_chars;
                    joined += delta;
                }
                std::string rest = detok.flush();
                EXPECT_TRUE(valid_utf8(rest));
                joined += rest;
                EXPECT_EQ(joined, tok->decode(ids, skip)) << model << ": " << text;
            }
        }
    }
    // The tiny vocabulary splits most non-Latin characters across tokens: the case must be exercised.
    EXPECT_GT(split_chars, 50);
}

TEST(Detokenizer, ByteTokensOfOneCharacter) {
    auto tok = Tokenizer::load(fixture_path("tiny-kimi-k2"));
    auto ids = tok->encode("😀");  // four single-byte tokens in the tiny vocabulary
    ASSERT_EQ(ids.size(), 4u);
    IncrementalDetokenizer detok(*tok, false);
    EXPECT_EQ(detok.push(ids[0]), "");
    EXPECT_EQ(detok.push(ids[1]), "");
    EXPECT_EQ(detok.push(ids[2]), "");
    EXPECT_EQ(detok.push(ids[3]), "😀");
    EXPECT_EQ(detok.flush(), "");
}

TEST(Detokenizer, InvalidBytesBecomeReplacementCharacters) {
    auto tok = Tokenizer::load(fixture_path("tiny-kimi-k2"));
    // Byte tokens: 0xF0 0x9F then 'a' (an interrupted 4-byte sequence), then a lone 0xE4 at the end.
    auto f0 = tok->token_to_id("\xF0");
    auto x9f = tok->token_to_id("\x9F");
    auto e4 = tok->token_to_id("\xE4");
    ASSERT_TRUE(f0 && x9f && e4);
    IncrementalDetokenizer detok(*tok, false);
    std::string out = detok.push(*f0);
    out += detok.push(*x9f);
    out += detok.push(64);  // 'a'
    out += detok.push(*e4);
    out += detok.flush();
    // Python: b"\xf0\x9fa\xe4".decode("utf-8", "replace") == "\ufffda\ufffd"
    EXPECT_EQ(out, "\xEF\xBF\xBD" "a" "\xEF\xBF\xBD");
}

TEST(Detokenizer, SkipSpecialKeepsToolCallTokens) {
    auto tok = Tokenizer::load(fixture_path("tiny-kimi-k2"));
    IncrementalDetokenizer detok(*tok, true);
    std::string out;
    for (int32_t id : tok->encode("<|im_assistant|><|tool_calls_section_begin|>ok<|im_end|>")) out += detok.push(id);
    out += detok.flush();
    EXPECT_EQ(out, "<|tool_calls_section_begin|>ok");
}

}  // namespace
}  // namespace k2

// UTF-8 helpers shared by the detokenizer and the template engine.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace k2::utf8 {

// Decodes `bytes` like Python's bytes.decode("utf-8", "replace"): each maximal invalid subpart becomes
// U+FFFD. With `final` false, an incomplete but so-far valid sequence at the end is left unconsumed;
// returns the number of bytes consumed.
size_t decode_replace(std::string_view bytes, std::string& out, bool final);

// Appends the UTF-8 encoding of a code point.
void append_code_point(uint32_t cp, std::string& out);

}  // namespace k2::utf8

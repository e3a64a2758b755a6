#include "tokenizer/utf8.h"

namespace k2::utf8 {
namespace {

constexpr const char* kReplacement = "\xEF\xBF\xBD";

// Length of the sequence a lead byte starts (0: not a lead byte), per the Unicode well-formed table.
int sequence_length(uint8_t b) {
    if (b < 0x80) return 1;
    if (b >= 0xC2 && b <= 0xDF) return 2;
    if (b >= 0xE0 && b <= 0xEF) return 3;
    if (b >= 0xF0 && b <= 0xF4) return 4;
    return 0;
}

// Valid range of the second byte for a lead byte (the first continuation is restricted for E0/ED/F0/F4).
bool second_byte_ok(uint8_t lead, uint8_t b) {
    switch (lead) {
        case 0xE0: return b >= 0xA0 && b <= 0xBF;
        case 0xED: return b >= 0x80 && b <= 0x9F;
        case 0xF0: return b >= 0x90 && b <= 0xBF;
        case 0xF4: return b >= 0x80 && b <= 0x8F;
        default: return b >= 0x80 && b <= 0xBF;
    }
}

}  // namespace

size_t decode_replace(std::string_view bytes, std::string& out, bool final) {
    size_t i = 0;
    const size_t n = bytes.size();
    while (i < n) {
        uint8_t lead = static_cast<uint8_t>(bytes[i]);
        if (lead < 0x80) {
            // ASCII fast path.
            size_t j = i + 1;
            while (j < n && static_cast<uint8_t>(bytes[j]) < 0x80) ++j;
            out.append(bytes.data() + i, j - i);
            i = j;
            continue;
        }
        int len = sequence_length(lead);
        if (len == 0) {
            out += kReplacement;
            ++i;
            continue;
        }
        // Count how many bytes of the sequence are valid (the maximal subpart).
        int valid = 1;
        while (valid < len && i + static_cast<size_t>(valid) < n) {
            uint8_t b = static_cast<uint8_t>(bytes[i + static_cast<size_t>(valid)]);
            bool ok = valid == 1 ? second_byte_ok(lead, b) : (b >= 0x80 && b <= 0xBF);
            if (!ok) break;
            ++valid;
        }
        if (valid == len) {
            out.append(bytes.data() + i, static_cast<size_t>(len));
            i += static_cast<size_t>(len);
        } else if (i + static_cast<size_t>(valid) == n && !final) {
            return i;  // an incomplete sequence at the end: wait for more bytes
        } else {
            out += kReplacement;
            i += static_cast<size_t>(valid);
        }
    }
    return i;
}

void append_code_point(uint32_t cp, std::string& out) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

}  // namespace k2::utf8

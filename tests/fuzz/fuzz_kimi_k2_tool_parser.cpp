// libFuzzer target: the kimi_k2 tool-call parser on arbitrary model output. The first 4 bytes seed the
// split of the rest (the text) into stream deltas of 1..64 bytes (or single bytes, for short texts, when the
// seed's low bits say so). Checks: no crash, and the streamed deltas reassembled as an OpenAI client does
// (content appended; tool calls by index, id/name from their first delta, arguments appended) equal the
// non-streaming parse; a call's first delta carries its id and name and no later delta repeats them.
// A violation aborts, so libFuzzer reports it with the input.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "server/kimi_k2_tool_parser.h"

namespace {

using k2::server::KimiK2StreamingToolParser;
using k2::server::StreamDelta;
using k2::server::ToolCall;
using k2::server::ToolCallDelta;

void require(bool ok, const char* what, std::string_view text) {
    if (!ok) {
        std::fprintf(stderr, "fuzz_kimi_k2_tool_parser: violated: %s\ntext (%zu bytes): %.*s\n", what, text.size(),
                     static_cast<int>(text.size()), text.data());
        std::abort();
    }
}

struct Reassembled {
    std::string content;
    std::vector<ToolCall> calls;
};

void apply(const StreamDelta& delta, Reassembled& out, std::string_view text) {
    out.content += delta.content;
    for (const ToolCallDelta& tc : delta.tool_calls) {
        require(tc.index >= 0 && static_cast<size_t>(tc.index) <= out.calls.size(), "call indexes are dense", text);
        const bool first = static_cast<size_t>(tc.index) == out.calls.size();
        require(first == (tc.id.has_value() && tc.name.has_value()), "id and name only in a call's first delta", text);
        if (first) {
            out.calls.push_back({*tc.id, *tc.name, ""});
        }
        out.calls[static_cast<size_t>(tc.index)].arguments += tc.arguments;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 4) {
        return 0;
    }
    uint32_t state = static_cast<uint32_t>(data[0]) | static_cast<uint32_t>(data[1]) << 8 |
                     static_cast<uint32_t>(data[2]) << 16 | static_cast<uint32_t>(data[3]) << 24;
    const std::string_view text(reinterpret_cast<const char*>(data) + 4, size - 4);
    // Each push re-parses the whole text so far (quadratic by design), so single bytes only for short texts.
    const bool byte_by_byte = (state & 7) == 0 && text.size() <= 2048;

    const k2::server::ToolParseResult whole = k2::server::parse_kimi_k2_tool_calls(text);
    require(whole.tools_called == !whole.tool_calls.empty(), "tools_called iff calls", text);
    require(!whole.content || !whole.content->empty(), "content is nullopt rather than empty", text);
    for (const ToolCall& call : whole.tool_calls) {
        require(!call.name.empty() && !call.id.empty(), "a call has an id and a name", text);
    }

    KimiK2StreamingToolParser parser;
    Reassembled streamed;
    for (size_t pos = 0; pos < text.size();) {
        state = state * 1664525u + 1013904223u;  // LCG: cheap, deterministic per input
        const size_t len = byte_by_byte ? 1 : 1 + (state >> 16) % 64;
        apply(parser.push(text.substr(pos, len)), streamed, text);
        pos += len;
    }
    apply(parser.finish(), streamed, text);

    require(streamed.content == whole.content.value_or(""), "streamed content == whole content", text);
    require(streamed.calls.size() == whole.tool_calls.size(), "streamed call count == whole call count", text);
    for (size_t i = 0; i < streamed.calls.size(); ++i) {
        require(streamed.calls[i].id == whole.tool_calls[i].id, "call id", text);
        require(streamed.calls[i].name == whole.tool_calls[i].name, "call name", text);
        require(streamed.calls[i].arguments == whole.tool_calls[i].arguments, "call arguments", text);
    }
    require(parser.tools_called() == whole.tools_called, "tools_called agrees", text);
    return 0;
}

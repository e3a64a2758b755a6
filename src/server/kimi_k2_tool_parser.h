// The `kimi_k2` tool-call parser (reference/vllm.md §3): turns Kimi-K2's tool-call markup
//   content <|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>ARGS
//   <|tool_call_end|>...<|tool_calls_section_end|>
// into OpenAI tool calls, for a whole text (non-streaming) and delta by delta (streaming).
//
// Both modes share one parse of the text so far, so streamed deltas always reassemble to the non-streaming
// result. Rules (vLLM's, plus "never lose text"):
// - Tool call id = the model's ID verbatim (`functions.get_weather:0`); name = ID up to the first ':', then
//   its last '.'-separated segment. IDs that do not end in `:<digits>` are skipped. Arguments are the raw
//   text between the argument-begin and call-end markers, whitespace-trimmed, never re-serialized.
// - Content = text outside sections. A section with at least one call contributes nothing else (header
//   noise is dropped); a section without any valid call (malformed output) contributes its text, without the
//   section markers, to the content. Text after a section end is content.
// - Both the plural `<|tool_calls_section_begin|>` and the singular `<|tool_call_section_begin|>` are accepted.
// - A section in which no call begins within 8192 characters is abandoned: its text becomes content.
// - A call cut off by the end of the output keeps the arguments produced so far.
// Thread-compatible: one parser per request (streaming state must never be shared between requests).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace k2::server {

struct ToolCall {
    std::string id;
    std::string name;
    std::string arguments;
};

struct ToolParseResult {
    bool tools_called = false;
    std::vector<ToolCall> tool_calls;
    std::optional<std::string> content;  // nullopt when empty
};

struct ToolCallDelta {
    int index = 0;
    std::optional<std::string> id;    // only in the first delta of a call
    std::optional<std::string> name;  // only in the first delta of a call
    std::string arguments;            // new argument text
};

struct StreamDelta {
    std::string content;
    std::vector<ToolCallDelta> tool_calls;
    bool empty() const { return content.empty() && tool_calls.empty(); }
};

inline constexpr std::string_view kToolSectionBegin = "<|tool_calls_section_begin|>";
inline constexpr std::string_view kToolSectionEnd = "<|tool_calls_section_end|>";
inline constexpr std::string_view kToolCallBegin = "<|tool_call_begin|>";
inline constexpr std::string_view kToolCallArgumentBegin = "<|tool_call_argument_begin|>";
inline constexpr std::string_view kToolCallEnd = "<|tool_call_end|>";

// Non-streaming: parses a complete model output.
ToolParseResult parse_kimi_k2_tool_calls(std::string_view text);

class KimiK2StreamingToolParser {
public:
    // Feeds the next text delta; returns what can be emitted now (held back: partial markers, trailing
    // whitespace of arguments, text inside an unresolved section).
    StreamDelta push(std::string_view delta);
    // The output ended: emits whatever was held back, so the total equals parse_kimi_k2_tool_calls(text).
    StreamDelta finish();
    bool tools_called() const { return m_num_sent_calls > 0; }
    void reset();

private:
    StreamDelta emit(bool final);

    std::string m_text;
    size_t m_sent_content_bytes = 0;
    int m_num_sent_calls = 0;
    std::vector<size_t> m_sent_argument_bytes;  // per sent call
};

}  // namespace k2::server

#include "server/kimi_k2_tool_parser.h"

#include <algorithm>
#include <array>
#include <cctype>

namespace k2::server {

namespace {

constexpr std::string_view kSingularSectionBegin = "<|tool_call_section_begin|>";
constexpr std::string_view kSingularSectionEnd = "<|tool_call_section_end|>";
// A section in which no call begins within this many characters is malformed (vLLM's 8192 limit).
constexpr size_t kMaxSectionHeaderChars = 8192;
// The longest marker that ends a section header (a call begin or a section end).
constexpr size_t kLongestSectionMarker =
    std::max({kToolCallBegin.size(), kToolSectionEnd.size(), kSingularSectionEnd.size()});

constexpr std::array<std::string_view, 2> kSectionBegins = {kToolSectionBegin, kSingularSectionBegin};
constexpr std::array<std::string_view, 2> kSectionEnds = {kToolSectionEnd, kSingularSectionEnd};

struct Match {
    size_t pos = std::string_view::npos;
    size_t length = 0;
    bool found() const { return pos != std::string_view::npos; }
    size_t end() const { return pos + length; }
};

template <size_t N>
Match find_first(std::string_view text, size_t from, const std::array<std::string_view, N>& markers) {
    Match best;
    for (std::string_view marker : markers) {
        const size_t pos = text.find(marker, from);
        if (pos != std::string_view::npos && pos < best.pos) {
            best = {pos, marker.size()};
        }
    }
    return best;
}

bool is_space(char c) {
    return std::isspace(static_cast<unsigned char>(c)) != 0;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && is_space(s.front()))
        s.remove_prefix(1);
    while (!s.empty() && is_space(s.back()))
        s.remove_suffix(1);
    return s;
}

// Length of the longest suffix of `text` that is a proper prefix of one of the markers: text that may
// still become a marker once the next delta arrives.
template <size_t N>
size_t partial_marker_suffix(std::string_view text, const std::array<std::string_view, N>& markers) {
    size_t longest = 0;
    for (std::string_view marker : markers) {
        const size_t max_len = std::min(text.size(), marker.size() - 1);
        for (size_t len = max_len; len > longest; --len) {
            if (text.substr(text.size() - len) == marker.substr(0, len)) {
                longest = len;
                break;
            }
        }
    }
    return longest;
}

// `functions.get_weather:0` -> get_weather; empty when the ID does not end in `:<digits>`.
std::string name_from_id(std::string_view id) {
    const size_t colon = id.rfind(':');
    if (id.empty() || colon == std::string_view::npos || colon + 1 == id.size() ||
        id.find('<') != std::string_view::npos) {
        return {};
    }
    for (size_t i = colon + 1; i < id.size(); ++i) {
        if (!std::isdigit(static_cast<unsigned char>(id[i])))
            return {};
    }
    std::string_view head = id.substr(0, id.find(':'));
    const size_t dot = head.rfind('.');
    if (dot != std::string_view::npos)
        head.remove_prefix(dot + 1);
    return std::string(trim(head));
}

std::string strip_section_markers(std::string_view body) {
    std::string out(body);
    for (std::string_view marker : {kToolSectionBegin, kSingularSectionBegin, kToolSectionEnd, kSingularSectionEnd}) {
        for (size_t pos = out.find(marker); pos != std::string::npos; pos = out.find(marker, pos)) {
            out.erase(pos, marker.size());
        }
    }
    return out;
}

struct ParseState {
    std::string content;
    std::vector<ToolCall> calls;
};

// Parses one call starting after its call-begin marker at `pos`. Returns the position after the call, or
// npos when the text ends inside the call (its partial arguments are then recorded when known).
size_t parse_call(std::string_view text, size_t pos, bool final, ParseState& state) {
    const size_t arg_begin = text.find(kToolCallArgumentBegin, pos);
    const Match next_call{text.find(kToolCallBegin, pos), kToolCallBegin.size()};
    const Match section_end = find_first(text, pos, kSectionEnds);
    if (arg_begin == std::string_view::npos || arg_begin > std::min(next_call.pos, section_end.pos)) {
        // No arguments for this call: skip it (or wait for more text).
        if (next_call.found() || section_end.found())
            return std::min(next_call.pos, section_end.pos);
        return std::string_view::npos;
    }
    const std::string_view id = trim(text.substr(pos, arg_begin - pos));
    const size_t args_start = arg_begin + kToolCallArgumentBegin.size();
    const size_t call_end = text.find(kToolCallEnd, args_start);
    const size_t next_begin = text.find(kToolCallBegin, args_start);
    const Match end_of_section = find_first(text, args_start, kSectionEnds);
    const size_t args_end = std::min({call_end, next_begin, end_of_section.pos});
    const std::string name = name_from_id(id);
    if (args_end == std::string_view::npos) {
        std::string_view args = text.substr(args_start);
        while (!args.empty() && is_space(args.front()))
            args.remove_prefix(1);
        if (!final) {
            args.remove_suffix(partial_marker_suffix(
                args,
                std::array<std::string_view, 4>{kToolCallEnd, kToolCallBegin, kToolSectionEnd, kSingularSectionEnd}));
        }
        while (!args.empty() && is_space(args.back()))
            args.remove_suffix(1);
        if (!name.empty())
            state.calls.push_back({std::string(id), name, std::string(args)});
        return std::string_view::npos;
    }
    if (!name.empty()) {
        state.calls.push_back(
            {std::string(id), name, std::string(trim(text.substr(args_start, args_end - args_start)))});
    }
    return args_end == call_end ? call_end + kToolCallEnd.size() : args_end;
}

// Parses inside a section whose body starts at `body_start`. Returns the position where outside-section
// parsing resumes, or npos when the text ends inside the section.
size_t parse_section(std::string_view text, size_t body_start, bool final, ParseState& state) {
    const size_t num_calls_before = state.calls.size();
    const size_t first_call = text.find(kToolCallBegin, body_start);
    const Match first_end = find_first(text, body_start, kSectionEnds);
    const size_t limit = body_start + kMaxSectionHeaderChars;
    // While streaming, a marker that begins within the limit may still be incomplete: decide only once any
    // such marker would be whole, so that the decision is the one the complete text gets.
    const size_t decidable_size = final ? limit + 1 : limit + kLongestSectionMarker;
    if (std::min(first_call, first_end.pos) > limit && text.size() >= decidable_size) {
        // Malformed: nothing that looks like a call for too long. The text is content after all.
        return body_start;
    }
    size_t pos = body_start;
    while (true) {
        const size_t call = text.find(kToolCallBegin, pos);
        const Match end = find_first(text, pos, kSectionEnds);
        if (call != std::string_view::npos && call < end.pos) {
            pos = parse_call(text, call + kToolCallBegin.size(), final, state);
            if (pos == std::string_view::npos)
                return pos;
            continue;
        }
        const bool has_calls = state.calls.size() > num_calls_before;
        if (end.found()) {
            if (!has_calls)
                state.content += strip_section_markers(text.substr(body_start, end.pos - body_start));
            return end.end();
        }
        if (final && !has_calls)
            state.content += strip_section_markers(text.substr(body_start));
        return std::string_view::npos;
    }
}

ParseState parse(std::string_view text, bool final) {
    ParseState state;
    size_t pos = 0;
    while (pos < text.size()) {
        const Match begin = find_first(text, pos, kSectionBegins);
        if (!begin.found()) {
            std::string_view rest = text.substr(pos);
            if (!final)
                rest.remove_suffix(partial_marker_suffix(rest, kSectionBegins));
            state.content += rest;
            break;
        }
        state.content += text.substr(pos, begin.pos - pos);
        // For an abandoned section this is begin.end(): its text is then parsed as outside text, so that a
        // partial section marker at its end is held back as anywhere else.
        pos = parse_section(text, begin.end(), final, state);
    }
    return state;
}

}  // namespace

ToolParseResult parse_kimi_k2_tool_calls(std::string_view text) {
    ParseState state = parse(text, /*final=*/true);
    ToolParseResult result;
    result.tools_called = !state.calls.empty();
    result.tool_calls = std::move(state.calls);
    if (!state.content.empty())
        result.content = std::move(state.content);
    return result;
}

StreamDelta KimiK2StreamingToolParser::push(std::string_view delta) {
    m_text.append(delta);
    return emit(/*final=*/false);
}

StreamDelta KimiK2StreamingToolParser::finish() {
    return emit(/*final=*/true);
}

void KimiK2StreamingToolParser::reset() {
    m_text.clear();
    m_sent_content_bytes = 0;
    m_num_sent_calls = 0;
    m_sent_argument_bytes.clear();
}

StreamDelta KimiK2StreamingToolParser::emit(bool final) {
    const ParseState state = parse(m_text, final);
    StreamDelta out;
    // The parse of a longer text extends the parse of a shorter one, so only suffixes are new.
    if (state.content.size() > m_sent_content_bytes) {
        out.content = state.content.substr(m_sent_content_bytes);
        m_sent_content_bytes = state.content.size();
    }
    for (size_t i = 0; i < state.calls.size(); ++i) {
        const ToolCall& call = state.calls[i];
        if (i >= static_cast<size_t>(m_num_sent_calls)) {
            out.tool_calls.push_back({static_cast<int>(i), call.id, call.name, call.arguments});
            m_sent_argument_bytes.push_back(call.arguments.size());
            ++m_num_sent_calls;
        } else if (call.arguments.size() > m_sent_argument_bytes[i]) {
            out.tool_calls.push_back(
                {static_cast<int>(i), std::nullopt, std::nullopt, call.arguments.substr(m_sent_argument_bytes[i])});
            m_sent_argument_bytes[i] = call.arguments.size();
        }
    }
    return out;
}

}  // namespace k2::server

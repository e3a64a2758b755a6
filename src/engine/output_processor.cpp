#include "engine/output_processor.h"

#include <algorithm>

namespace k2 {

OutputProcessor::OutputProcessor(std::unique_ptr<TextStream> text, std::vector<std::string> stop_strings,
                                 bool include_stop_str_in_output)
    : m_stream(std::move(text)),
      m_stop_strings(std::move(stop_strings)),
      m_include_stop_str(include_stop_str_in_output) {}

TextUpdate OutputProcessor::add_token(int32_t token_id, bool skip_text, bool check_stop, bool finished) {
    TextUpdate update;
    if (m_stream == nullptr || m_done) return update;
    size_t num_new_bytes = 0;
    if (!skip_text) {
        const std::string piece = m_stream->push(token_id);
        m_text += piece;
        num_new_bytes = piece.size();
    }
    if (check_stop && !m_stop_strings.empty() && num_new_bytes > 0) {
        update.stop_string = match_stop(num_new_bytes);
        if (update.stop_string.has_value()) {
            m_done = true;
            update.text_delta = take_sendable(true);
            return update;
        }
    }
    if (finished) {
        update.text_delta = finish();
        return update;
    }
    update.text_delta = take_sendable(false);
    return update;
}

std::string OutputProcessor::finish() {
    if (m_stream == nullptr) return {};
    if (!m_done) {
        m_text += m_stream->flush();
        m_done = true;
    }
    return take_sendable(true);
}

std::optional<std::string> OutputProcessor::match_stop(size_t num_new_bytes) {
    // A match must end inside the new bytes (earlier text was already checked), so the search starts
    // len(stop) - 1 bytes before them. The earliest match wins.
    size_t best_pos = std::string::npos;
    const std::string* best = nullptr;
    for (const std::string& stop : m_stop_strings) {
        const size_t new_start = m_text.size() - num_new_bytes;
        const size_t from = new_start >= stop.size() - 1 ? new_start - (stop.size() - 1) : 0;
        const size_t pos = m_text.find(stop, from);
        if (pos != std::string::npos && pos < best_pos) {
            best_pos = pos;
            best = &stop;
        }
    }
    if (best == nullptr) return std::nullopt;
    m_text.resize(m_include_stop_str ? best_pos + best->size() : best_pos);
    return *best;
}

size_t OutputProcessor::partial_match_length() const {
    size_t longest = 0;
    for (const std::string& stop : m_stop_strings) {
        const size_t max_len = std::min(stop.size() - 1, m_text.size());
        for (size_t len = max_len; len > longest; --len) {
            if (m_text.compare(m_text.size() - len, len, stop, 0, len) == 0) {
                longest = len;
                break;
            }
        }
    }
    return longest;
}

std::string OutputProcessor::take_sendable(bool finished) {
    size_t end = m_text.size();
    // NOTE: with include_stop_str_in_output the stop text is sent anyway, but holding back still keeps
    // the text after a stop string from leaking out before the match is seen.
    if (!finished) end -= partial_match_length();
    if (end <= m_num_sent) return {};
    std::string delta = m_text.substr(m_num_sent, end - m_num_sent);
    m_num_sent = end;
    return delta;
}

}  // namespace k2

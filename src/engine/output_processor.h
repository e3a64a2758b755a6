// OutputProcessor: one sequence's text side — incremental detokenization, stop strings matched across
// token boundaries (held back while a partial match is possible), and the text delta of each step
// (vLLM v1 output_processor.py + detokenizer.py).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace k2 {

// Token ids in, newly completed text out (the seam over IncrementalDetokenizer; tests use fakes).
class TextStream {
public:
    virtual ~TextStream() = default;
    virtual std::string push(int32_t token_id) = 0;  // never ends inside a UTF-8 character
    virtual std::string flush() = 0;                 // what is left at the end
};

struct TextUpdate {
    std::string text_delta;                 // safe to send now
    std::optional<std::string> stop_string;  // set when a stop string matched (the sequence is finished)
};

class OutputProcessor {
public:
    // `text` may be null (no tokenizer): no text and no stop strings.
    OutputProcessor(std::unique_ptr<TextStream> text, std::vector<std::string> stop_strings,
                    bool include_stop_str_in_output);

    // Adds one output token. `skip_text`: the token ended the sequence as EOS / a stop token id and its
    // text is not part of the output. `check_stop`: stop strings are active (past min_tokens).
    // `finished`: the engine already finished the sequence for another reason, so nothing is held back.
    TextUpdate add_token(int32_t token_id, bool skip_text, bool check_stop, bool finished);
    // The text still held back (partial stop-string matches, undecoded bytes) when the sequence ends
    // without a stop string.
    std::string finish();

    const std::string& text() const { return m_text; }  // all output text so far (after truncation)

private:
    // Length of the longest suffix of m_text that is a proper prefix of a stop string.
    size_t partial_match_length() const;
    std::optional<std::string> match_stop(size_t num_new_bytes);
    std::string take_sendable(bool finished);

    std::unique_ptr<TextStream> m_stream;
    std::vector<std::string> m_stop_strings;
    bool m_include_stop_str;
    std::string m_text;
    size_t m_num_sent = 0;  // bytes of m_text already handed out
    bool m_done = false;
};

}  // namespace k2

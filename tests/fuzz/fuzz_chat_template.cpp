// libFuzzer target: chat-template rendering. First byte even: the input is a template source rendered
// with a fixed conversation; odd: the input is a chat request rendered with Kimi-K2's template.
// Template and request errors are k2::Error; anything else (crash, leak, other exception) is a bug.
#include <cstdint>
#include <string>

#include "../unit/test_paths.h"
#include "core/error.h"
#include "tokenizer/jinja.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static auto tok = k2::Tokenizer::load(k2::fixture_path("tiny-kimi-k2"));
    static const auto context = nlohmann::ordered_json::parse(R"({
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": [{"type": "text", "text": "hi 😀"}], "name": "al"},
                     {"role": "assistant", "content": "", "tool_calls": [{"id": "functions.f:0", "type": "function",
                      "function": {"name": "f", "arguments": {"x": [1, 2.5, null, true]}}}]},
                     {"role": "tool", "tool_call_id": "functions.f:0", "content": "ok"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "add_generation_prompt": true, "bos_token": "[BOS]"})");
    if (size == 0) return 0;
    const std::string input(reinterpret_cast<const char*>(data) + 1, size - 1);
    try {
        if ((data[0] & 1) == 0) {
            k2::jinja::Template tmpl(input, "fuzz.jinja");
            (void)tmpl.render(context);
        } else {
            auto request = nlohmann::ordered_json::parse(input, nullptr, /*allow_exceptions=*/false);
            if (request.is_discarded()) return 0;
            (void)tok->apply_chat_template_ordered(request);
        }
    } catch (const k2::Error&) {
        // Expected for invalid templates and requests.
    }
    return 0;
}

// libFuzzer target: an HTTP body of POST /v1/chat/completions and /v1/completions through the server's pure
// request path (parse_body -> parse_chat_request / parse_completion_request -> resolve_max_tokens), the same
// calls OpenAiServer::handle and start_chat_completion/start_completion make before touching the engine.
// The server answers ApiError with its own status and k2::Error with 400 (openai_server.cpp); a request may
// only fail with a 4xx. Any other exception (it would be a 500), a crash or a violated postcondition is a bug.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "server/openai_protocol.h"

namespace {

using k2::server::ApiError;

void require(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "fuzz_openai_request: violated: %s\n", what);
        std::abort();
    }
}

void check_client_error(const ApiError& e) {
    require(e.status() >= 400 && e.status() < 500, "a request error must be a 4xx");
}

// What every accepted request guarantees to the generation code.
void check_sampling(const k2::SamplingParams& p, const k2::server::ProtocolLimits& limits) {
    require(p.n >= 1 && p.n <= limits.max_n, "1 <= n <= max_n");
    require(p.top_p > 0.0 && p.top_p <= 1.0, "top_p in (0, 1]");
    require(p.temperature >= 0.0 && p.top_k >= 0 && p.min_tokens >= 0, "non-negative sampling fields");
    for (const std::string& s : p.stop)
        require(!s.empty(), "no empty stop string");
    for (int32_t id : p.stop_token_ids)
        require(id >= 0 && id < limits.vocab_size, "stop_token_ids in vocab");
}

void check_max_tokens(std::optional<int> requested, const k2::server::GenerationDefaults& defaults) {
    constexpr int kMaxModelLen = 4096;
    for (int num_prompt : {1, 4095}) {
        try {
            const int max_tokens =
                k2::server::resolve_max_tokens(num_prompt, requested, kMaxModelLen, defaults.max_new_tokens);
            require(max_tokens >= 1 && max_tokens <= kMaxModelLen - num_prompt, "max_tokens fits the context");
        } catch (const ApiError& e) {
            check_client_error(e);
        }
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    // Kimi-K2's vocabulary and generation_config.json defaults; an unset config as the second case.
    static const k2::server::ProtocolLimits limits{20, 128, 163840};
    static const k2::server::GenerationDefaults kimi_defaults = k2::server::parse_generation_defaults(
        nlohmann::ordered_json::parse(R"({"temperature": 0.6, "top_p": 1.0, "max_new_tokens": 1024})"));
    const std::string body(reinterpret_cast<const char*>(data), size);
    nlohmann::ordered_json request;
    try {
        request = k2::server::parse_body(body);
    } catch (const ApiError& e) {
        check_client_error(e);
        return 0;
    }
    require(request.is_object(), "parse_body returns an object");
    for (const k2::server::GenerationDefaults& defaults : {k2::server::GenerationDefaults{}, kimi_defaults}) {
        for (bool enable_auto_tool_choice : {false, true}) {
            try {
                const k2::server::ChatRequest chat =
                    k2::server::parse_chat_request(request, defaults, limits, enable_auto_tool_choice);
                require(chat.messages.is_array() && !chat.messages.empty(), "messages is a non-empty list");
                require(chat.top_logprobs >= 0 && chat.top_logprobs <= limits.max_logprobs, "top_logprobs limit");
                require(!chat.max_tokens || *chat.max_tokens >= 1, "max_tokens >= 1");
                if (chat.tool_choice == k2::server::ToolChoice::kNamed) {
                    bool declared = false;
                    for (const auto& tool : chat.tools)
                        declared = declared || tool["function"]["name"] == chat.named_tool;
                    require(declared, "a named tool_choice names a declared tool");
                }
                check_sampling(chat.params, limits);
                check_max_tokens(chat.max_tokens, defaults);
            } catch (const ApiError& e) {
                check_client_error(e);
            } catch (const k2::Error&) {
                // Answered as 400 by OpenAiServer::handle.
            }
        }
        try {
            const k2::server::CompletionRequest completion =
                k2::server::parse_completion_request(request, defaults, limits);
            require(!completion.prompts.empty() && completion.prompts.size() <= 1024, "1..1024 prompts");
            for (const k2::server::CompletionPrompt& p : completion.prompts) {
                require(p.text.has_value() || !p.token_ids.empty(), "a prompt is text or non-empty ids");
                for (int32_t id : p.token_ids)
                    require(id >= 0 && id < limits.vocab_size, "prompt ids in vocab");
            }
            check_sampling(completion.params, limits);
            check_max_tokens(completion.max_tokens_given ? std::optional<int>(completion.max_tokens) : std::nullopt,
                             defaults);
        } catch (const ApiError& e) {
            check_client_error(e);
        } catch (const k2::Error&) {
        }
    }
    return 0;
}

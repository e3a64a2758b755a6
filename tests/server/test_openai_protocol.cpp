// Request validation with vLLM's messages (reference/vllm.md §2.3-§2.5), the error envelope, SSE framing
// and vLLM's human-readable sizes (§1).
#include <gtest/gtest.h>

#include <algorithm>

#include "core/error.h"
#include "server/openai_protocol.h"

namespace k2::server {
namespace {

using nlohmann::json;

json chat(json extra = json::object()) {
    json body = {{"model", "m"}, {"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}};
    body.update(extra);
    return body;
}

std::string chat_error(const json& body, bool auto_tools = false) {
    try {
        parse_chat_request(body, {}, ProtocolLimits{20, 128, 100}, auto_tools);
    } catch (const ApiError& e) {
        EXPECT_EQ(e.status(), 400);
        return e.what();
    }
    return "";
}

TEST(OpenAiProtocol, ChatValidationMessagesMatchVllm) {
    EXPECT_EQ(chat_error(chat({{"stream_options", {{"include_usage", true}}}})),
              "Stream options can only be defined when `stream=True`.");
    EXPECT_EQ(chat_error(chat({{"top_logprobs", 2}})), "when using `top_logprobs`, `logprobs` must be set to true.");
    EXPECT_EQ(chat_error(chat({{"tool_choice", "none"}})), "When using `tool_choice`, `tools` must be set.");
    const json tools = json::array({{{"type", "function"}, {"function", {{"name", "f"}}}}});
    EXPECT_EQ(chat_error(chat({{"tools", tools}})),
              "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set");
    EXPECT_EQ(chat_error(chat({{"tools", tools}}), /*auto_tools=*/true), "");
    EXPECT_EQ(
        chat_error(chat({{"tools", tools}, {"tool_choice", {{"type", "function"}, {"function", {{"name", "g"}}}}}})),
        "The tool specified in `tool_choice` does not match any of the specified `tools`");
    EXPECT_EQ(chat_error(chat({{"logprobs", true}, {"top_logprobs", 21}})),
              "Requested sample logprobs of 21, which is greater than max allowed: 20");
    EXPECT_EQ(chat_error(chat({{"n", 0}})), "n must be at least 1, got 0.");
    EXPECT_EQ(chat_error(chat({{"top_p", 0}})), "top_p must be in (0, 1], got 0.");
    EXPECT_EQ(chat_error(chat({{"top_k", -2}})), "top_k must be 0 (disable), or at least 1, got -2.");
    EXPECT_EQ(chat_error(chat({{"max_tokens", 0}})), "max_tokens must be at least 1, got 0.");
    EXPECT_FALSE(chat_error(chat({{"max_tokens", 1e30}})).empty());           // never reaches int arithmetic
    EXPECT_EQ(chat_error(chat({{"stop_token_ids", {100}}})).empty(), false);  // outside the vocabulary
    EXPECT_EQ(chat_error(json{{"model", "m"}}), "Field required: 'messages'");
    EXPECT_EQ(chat_error(chat({{"add_generation_prompt", true}, {"continue_final_message", true}})),
              "Cannot set both `continue_final_message` and `add_generation_prompt` to True.");
}

TEST(OpenAiProtocol, ChatFieldsAndDefaults) {
    GenerationDefaults defaults;
    defaults.temperature = 0.6;
    const json tools = json::array({{{"type", "function"}, {"function", {{"name", "f"}}}}});
    const ChatRequest r = parse_chat_request(chat({{"max_tokens", 5},
                                                   {"max_completion_tokens", 7},
                                                   {"stream", true},
                                                   {"stream_options", json::object()},
                                                   {"top_k", -1},
                                                   {"tools", tools},
                                                   {"tool_choice", "required"},
                                                   {"unknown_field", 1},
                                                   {"seed", 3}}),
                                             defaults, {}, false);
    EXPECT_EQ(r.max_tokens, 7);    // max_completion_tokens wins
    EXPECT_TRUE(r.include_usage);  // default true when stream_options is present
    EXPECT_EQ(r.params.top_k, 0);
    EXPECT_DOUBLE_EQ(r.params.temperature, 0.6);  // generation_config.json default
    EXPECT_EQ(r.tool_choice, ToolChoice::kRequired);
    EXPECT_EQ(r.params.seed, 3);
    // "required" with an empty tool list is "none", as in vLLM.
    EXPECT_EQ(
        parse_chat_request(chat({{"tools", json::array()}, {"tool_choice", "required"}}), {}, {}, false).tool_choice,
        ToolChoice::kNone);
}

TEST(OpenAiProtocol, CompletionPromptForms) {
    const ProtocolLimits limits{20, 128, 100};
    EXPECT_EQ(parse_completion_request({{"prompt", "a"}}, {}, limits).prompts.size(), 1u);
    EXPECT_EQ(parse_completion_request({{"prompt", {"a", "b"}}}, {}, limits).prompts.size(), 2u);
    const CompletionRequest ids = parse_completion_request({{"prompt", {1, 2, 3}}}, {}, limits);
    ASSERT_EQ(ids.prompts.size(), 1u);
    EXPECT_EQ(ids.prompts[0].token_ids, (std::vector<int32_t>{1, 2, 3}));
    EXPECT_EQ(parse_completion_request({{"prompt", {{1, 2}, {3}}}}, {}, limits).prompts.size(), 2u);
    EXPECT_EQ(ids.max_tokens, 16);                                                         // completions default
    EXPECT_THROW(parse_completion_request({{"prompt", {1, 200}}}, {}, limits), ApiError);  // out of vocabulary
    EXPECT_THROW(parse_completion_request({{"prompt", json::array()}}, {}, limits), ApiError);
    EXPECT_THROW(parse_completion_request({{"prompt", 5}}, {}, limits), ApiError);
    EXPECT_THROW(parse_completion_request({{"prompt", "a"}, {"logprobs", 21}}, {}, limits), ApiError);
}

TEST(OpenAiProtocol, ContextLengthMessages) {
    try {
        resolve_max_tokens(10, std::nullopt, 10, std::nullopt);
        FAIL();
    } catch (const ApiError& e) {
        EXPECT_STREQ(e.what(),
                     "This model's maximum context length is 10 tokens. However, your request has 10 input "
                     "tokens. Please reduce the length of the input messages.");
    }
    try {
        resolve_max_tokens(4, 8, 10, std::nullopt);
        FAIL();
    } catch (const ApiError& e) {
        EXPECT_STREQ(e.what(),
                     "'max_tokens' or 'max_completion_tokens' is too large: 8. This model's maximum context "
                     "length is 10 tokens and your request has 4 input tokens (8 > 10 - 4).");
    }
    EXPECT_EQ(resolve_max_tokens(4, std::nullopt, 10, std::nullopt), 6);
    EXPECT_EQ(resolve_max_tokens(4, std::nullopt, 10, 3), 3);
    EXPECT_EQ(resolve_max_tokens(4, 5, 10, std::nullopt), 5);
}

TEST(OpenAiProtocol, ErrorEnvelopeAndSse) {
    const json e = error_json(404, "The model `x` does not exist.", "NotFoundError", "model");
    EXPECT_EQ(
        e.dump(),
        R"({"error":{"code":404,"message":"The model `x` does not exist.","param":"model","type":"NotFoundError"}})");
    EXPECT_EQ(sse_event("{}"), "data: {}\n\n");
    EXPECT_STREQ(kSseDone, "data: [DONE]\n\n");
    // A token's raw bytes may be invalid UTF-8; the dump must not throw.
    EXPECT_EQ(dump_json(json(std::string("a\xff"))), "\"a\xEF\xBF\xBD\"");
    EXPECT_THROW(parse_body("{oops"), ApiError);
    EXPECT_THROW(parse_body("[1]"), ApiError);
}

// A deeply nested body is refused before parsing: copying or rendering it would recurse once per level and
// overflow the stack (200k levels crashed the request path).
TEST(OpenAiProtocol, DeeplyNestedBodyIsRefused) {
    const size_t depth = 1000000;
    const std::string deep =
        R"({"messages": [{"role": "user", "content": )" + std::string(depth, '[') + std::string(depth, ']') + "}]}";
    try {
        parse_body(deep);
        FAIL() << "expected an ApiError";
    } catch (const ApiError& e) {
        EXPECT_EQ(e.status(), 400);
    }
    // Brackets inside strings (also after escaped quotes) do not count; 512 levels are fine.
    const std::string brackets =
        R"({"messages": [{"role": "user", "content": "\"[[[[)" + std::string(5000, '[') + "\"}]}";
    EXPECT_TRUE(parse_body(brackets).is_object());
    EXPECT_TRUE(parse_body("{\"a\": " + std::string(511, '[') + std::string(511, ']') + "}").is_object());
    EXPECT_THROW(parse_body("{\"a\": " + std::string(512, '[') + std::string(512, ']') + "}"), ApiError);
}

TEST(OpenAiProtocol, HumanReadableSizes) {
    EXPECT_EQ(parse_human_int("2048", "--max-model-len"), 2048);
    EXPECT_EQ(parse_human_int("32k", "--max-model-len"), 32000);
    EXPECT_EQ(parse_human_int("32K", "--max-model-len"), 32768);
    EXPECT_EQ(parse_human_int("25.6k", "--max-model-len"), 25600);
    EXPECT_EQ(parse_human_int("2M", "--max-model-len"), 2 * 1048576);
    EXPECT_EQ(parse_human_int("1g", "--max-model-len"), 1000000000);
    EXPECT_THROW(parse_human_int("1.5K", "--max-model-len"), Error);
    EXPECT_THROW(parse_human_int("12x", "--max-model-len"), Error);
    EXPECT_THROW(parse_human_int("", "--max-model-len"), Error);
}

TEST(OpenAiProtocol, ConstantTimeEquals) {
    EXPECT_TRUE(constant_time_equals("secret", "secret"));
    EXPECT_FALSE(constant_time_equals("secret", "secreT"));
    EXPECT_FALSE(constant_time_equals("secret", "secret2"));
    EXPECT_FALSE(constant_time_equals("", "x"));
}

TEST(OpenAiProtocol, LogitBiasAsVllmTakesIt) {
    const ProtocolLimits limits{20, 128, 100};
    const ChatRequest r = parse_chat_request(
        chat({{"logit_bias", {{"5", 3.5}, {" 7 ", -1000}, {"99", 250}, {"+08", 1}}}}), {}, limits, false);
    using Bias = std::vector<std::pair<int32_t, float>>;
    Bias bias = r.params.logit_bias;
    std::sort(bias.begin(), bias.end());
    EXPECT_EQ(bias, (Bias{{5, 3.5f}, {7, -100.0f}, {8, 1.0f}, {99, 100.0f}}));  // clamped to [-100, 100]
    // (nlohmann::json keeps keys sorted: "-1" comes before "100".)
    EXPECT_EQ(chat_error(chat({{"logit_bias", {{"100", 1}, {"-1", 1}, {"3", 1}}}})),
              "token_id(s) [-1, 100] in logit_bias contain out-of-vocab token ids. Vocabulary size: 100");
    EXPECT_EQ(chat_error(chat({{"logit_bias", {{"abc", 1}}}})),
              "Found token_id in logit_bias that is not an integer or string representing an integer");
    EXPECT_EQ(chat_error(chat({{"logit_bias", {{"1.5", 1}}}})),
              "Found token_id in logit_bias that is not an integer or string representing an integer");
    EXPECT_FALSE(chat_error(chat({{"logit_bias", {{"5", "high"}}}})).empty());
    EXPECT_FALSE(chat_error(chat({{"logit_bias", json::array({1, 2})}})).empty());
    EXPECT_EQ(parse_completion_request({{"prompt", "a"}, {"logit_bias", {{"3", -100}}}}, {}, limits).params.logit_bias,
              (Bias{{3, -100.0f}}));
}

TEST(OpenAiProtocol, PromptLogprobsRules) {
    const ProtocolLimits limits{20, 128, 100};
    EXPECT_EQ(parse_chat_request(chat({{"prompt_logprobs", 3}}), {}, limits, false).params.prompt_logprobs, 3);
    EXPECT_EQ(chat_error(chat({{"prompt_logprobs", 21}})),
              "Requested prompt logprobs of 21, which is greater than max allowed: 20");
    EXPECT_EQ(chat_error(chat({{"prompt_logprobs", -1}})),  // -1 = the whole vocabulary (100 here)
              "Requested prompt logprobs of 100, which is greater than max allowed: 20");
    EXPECT_EQ(chat_error(chat({{"prompt_logprobs", -2}})), "`prompt_logprobs` must be a positive value or -1.");
    EXPECT_EQ(chat_error(chat({{"prompt_logprobs", 1}, {"stream", true}})),
              "`prompt_logprobs` are not available when `stream=True`.");
    EXPECT_EQ(chat_error(chat({{"prompt_logprobs", 0}, {"stream", true}})), "");  // vLLM refuses only > 0 or -1
    const ProtocolLimits unlimited{-1, 128, 100};
    const CompletionRequest all = parse_completion_request({{"prompt", "a"}, {"prompt_logprobs", -1}}, {}, unlimited);
    EXPECT_EQ(all.params.prompt_logprobs, 100);
}

TEST(OpenAiProtocol, ResponseFormat) {
    EXPECT_EQ(chat_error(chat({{"response_format", {{"type", "text"}}}})), "");
    EXPECT_EQ(chat_error(chat({{"response_format", {{"type", "json_object"}}}})),
              "response_format type 'json_object' is not supported: k2 has no structured-output (constrained) "
              "decoding; only {\"type\": \"text\"} is accepted");
    EXPECT_NE(chat_error(chat({{"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "x"}}}}}})), "");
    EXPECT_NE(chat_error(chat({{"response_format", {{"type", "yaml"}}}})), "");
    EXPECT_NE(chat_error(chat({{"response_format", "json"}})), "");
    EXPECT_NE(chat_error(chat({{"guided_json", {{"type", "object"}}}})), "");
    try {
        parse_completion_request({{"prompt", "a"}, {"response_format", {{"type", "json_object"}}}}, {}, {});
        FAIL();
    } catch (const ApiError& e) {
        EXPECT_EQ(e.param(), "response_format");
    }
}

}  // namespace
}  // namespace k2::server

// OpenAI request parsing and validation with vLLM's rules and messages (reference/vllm.md §2.3-§2.5, §2.8),
// the error envelope, and the SSE framing. Pure functions over JSON; no engine, no sockets.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "engine/sampling_params.h"

namespace k2::server {

// An error answered to the client: HTTP status, OpenAI error type and the offending field.
class ApiError : public std::runtime_error {
public:
    ApiError(int status, std::string message, std::string type = "BadRequestError",
             std::optional<std::string> param = std::nullopt)
        : std::runtime_error(message), m_status(status), m_type(std::move(type)), m_param(std::move(param)) {}
    int status() const { return m_status; }
    const std::string& type() const { return m_type; }
    const std::optional<std::string>& param() const { return m_param; }

private:
    int m_status;
    std::string m_type;
    std::optional<std::string> m_param;
};

// {"error": {"message", "type", "param", "code"}} (vLLM >= 0.10).
nlohmann::ordered_json error_json(int status, const std::string& message, const std::string& type,
                          const std::optional<std::string>& param = std::nullopt);

// Dumps JSON for the wire; invalid UTF-8 (a token's raw bytes) becomes U+FFFD instead of throwing.
std::string dump_json(const nlohmann::ordered_json& value);

// One SSE event: "data: <payload>\n\n".
std::string sse_event(const std::string& payload);
inline constexpr const char* kSseDone = "data: [DONE]\n\n";

// Sampling defaults from the model's generation_config.json (--generation-config auto); they replace
// vLLM's defaults for fields the request leaves unset.
struct GenerationDefaults {
    std::optional<double> temperature;
    std::optional<double> top_p;
    std::optional<int> top_k;
    std::optional<double> min_p;
    std::optional<double> repetition_penalty;
    std::optional<int> max_new_tokens;
};
GenerationDefaults parse_generation_defaults(const nlohmann::ordered_json& generation_config);

struct ProtocolLimits {
    int max_logprobs = 20;  // --max-logprobs; -1: no limit
    int max_n = 128;
    int vocab_size = 0;
};

enum class ToolChoice { kNone, kAuto, kRequired, kNamed };

struct ChatRequest {
    std::string model;
    nlohmann::ordered_json messages;
    nlohmann::ordered_json tools;  // array or null
    ToolChoice tool_choice = ToolChoice::kNone;
    std::string named_tool;
    bool stream = false;
    bool include_usage = false;
    bool continuous_usage_stats = false;
    bool logprobs = false;
    int top_logprobs = 0;
    std::optional<int> max_tokens;  // max_completion_tokens, else max_tokens
    bool add_generation_prompt = true;
    bool continue_final_message = false;
    bool echo = false;
    nlohmann::ordered_json chat_template_kwargs;
    std::string request_id;  // vLLM's request_id field, if given
    SamplingParams params;   // max_tokens filled in later, once the prompt length is known
};

struct CompletionPrompt {
    std::optional<std::string> text;
    std::vector<int32_t> token_ids;  // when given as ids (or after tokenization)
};

struct CompletionRequest {
    std::string model;
    std::vector<CompletionPrompt> prompts;
    bool stream = false;
    bool include_usage = false;
    bool continuous_usage_stats = false;
    bool echo = false;
    std::optional<int> logprobs;
    int max_tokens = 16;
    bool max_tokens_given = false;
    bool add_special_tokens = true;
    std::string request_id;
    SamplingParams params;
};

// Both throw ApiError(400) with vLLM's message for invalid requests. Unknown fields are ignored.
ChatRequest parse_chat_request(const nlohmann::ordered_json& body, const GenerationDefaults& defaults,
                               const ProtocolLimits& limits, bool enable_auto_tool_choice);
CompletionRequest parse_completion_request(const nlohmann::ordered_json& body, const GenerationDefaults& defaults,
                                           const ProtocolLimits& limits);

// vLLM's context-length rules (§2.5): throws ApiError(400) when the prompt does not fit or the requested
// max tokens overflow the context; returns the effective max_tokens.
int resolve_max_tokens(int num_prompt_tokens, std::optional<int> requested, int max_model_len,
                       std::optional<int> generation_max_new_tokens);

// Parses a JSON body; throws ApiError(400) for malformed JSON or a non-object.
nlohmann::ordered_json parse_body(const std::string& body);

// Constant-time comparison of a presented secret (CVE-2025-59425).
bool constant_time_equals(const std::string& a, const std::string& b);

// Human-readable integers as vLLM takes them: 1k=1000, 1K=1024, 25.6k=25600, 2M=2*2^20 (decimal k/m/g,
// binary K/M/G, no decimals with binary). Throws k2::Error naming `flag`.
int64_t parse_human_int(const std::string& text, const std::string& flag);

}  // namespace k2::server

#include "server/openai_protocol.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/error.h"

namespace k2::server {

using json = nlohmann::ordered_json;

namespace {

// Bounds on request parts whose cost grows with their size before the prompt-length check can refuse them
// (docs/hardening.md, input limits). OpenAI's API documents the same 128-tool bound; vLLM has none of these.
constexpr size_t kMaxStopStrings = 128;        // each is matched against the output after every token
constexpr size_t kMaxStopStringBytes = 4096;
constexpr size_t kMaxTools = 128;
constexpr size_t kMaxToolsBytes = size_t{1} << 20;  // 20 MB of tools took 14 s to render and tokenize

ApiError bad_request(const std::string& message, std::optional<std::string> param = std::nullopt) {
    return ApiError(400, message, "BadRequestError", std::move(param));
}

const json* find(const json& body, const char* key) {
    const auto it = body.find(key);
    if (it == body.end() || it->is_null())
        return nullptr;
    return &*it;
}

std::optional<double> get_number(const json& body, const char* key) {
    const json* v = find(body, key);
    if (!v)
        return std::nullopt;
    if (!v->is_number())
        throw bad_request(fmt::format("'{}' must be a number", key), key);
    const double d = v->get<double>();
    if (!std::isfinite(d))
        throw bad_request(fmt::format("'{}' must be finite", key), key);
    return d;
}

// Integers as pydantic takes them (an integral float such as 3.0 is fine), range-checked before any use.
std::optional<int64_t> get_int64(const json& body, const char* key) {
    const json* v = find(body, key);
    if (!v)
        return std::nullopt;
    if (v->is_number_integer()) {
        if (v->is_number_unsigned() &&
            v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
            throw bad_request(fmt::format("'{}' is out of range", key), key);
        }
        return v->get<int64_t>();
    }
    if (v->is_number_float()) {
        const double d = v->get<double>();
        if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e18)
            return static_cast<int64_t>(d);
    }
    throw bad_request(fmt::format("'{}' must be an integer", key), key);
}

std::optional<int> get_int(const json& body, const char* key) {
    const std::optional<int64_t> v = get_int64(body, key);
    if (!v)
        return std::nullopt;
    if (*v < std::numeric_limits<int>::min() || *v > std::numeric_limits<int>::max()) {
        throw bad_request(fmt::format("'{}' is out of range: {}", key, *v), key);
    }
    return static_cast<int>(*v);
}

std::optional<bool> get_bool(const json& body, const char* key) {
    const json* v = find(body, key);
    if (!v)
        return std::nullopt;
    if (!v->is_boolean())
        throw bad_request(fmt::format("'{}' must be a boolean", key), key);
    return v->get<bool>();
}

std::optional<std::string> get_string(const json& body, const char* key) {
    const json* v = find(body, key);
    if (!v)
        return std::nullopt;
    if (!v->is_string())
        throw bad_request(fmt::format("'{}' must be a string", key), key);
    return v->get<std::string>();
}

// OpenAI logit_bias: {"<token id>": bias}. vLLM converts the keys with int(), clamps the values to
// [-100, 100] (OpenAI's documented range) and refuses ids outside the model's vocabulary.
std::vector<std::pair<int32_t, float>> parse_logit_bias(const json& body, const ProtocolLimits& limits) {
    const json* bias = find(body, "logit_bias");
    if (!bias)
        return {};
    if (!bias->is_object())
        throw bad_request("'logit_bias' must be an object mapping token ids to bias values", "logit_bias");
    for (const auto& [key, value] : bias->items()) {
        if (!value.is_number() || !std::isfinite(value.get<double>())) {
            throw bad_request(fmt::format("logit_bias.{}: Input should be a valid number, got {}", key, value.dump()),
                              "logit_bias");
        }
    }
    std::vector<std::pair<int32_t, float>> result;
    std::vector<std::string> out_of_vocab;
    for (const auto& [key, value] : bias->items()) {
        // Python's int(): surrounding whitespace and a sign are fine, nothing else.
        const size_t begin = key.find_first_not_of(" \t\n\r");
        const size_t end = key.find_last_not_of(" \t\n\r");
        const std::string digits = begin == std::string::npos ? "" : key.substr(begin, end - begin + 1);
        const size_t first_digit = !digits.empty() && (digits[0] == '-' || digits[0] == '+') ? 1 : 0;
        if (digits.size() <= first_digit || digits.find_first_not_of("0123456789", first_digit) != std::string::npos) {
            throw bad_request("Found token_id in logit_bias that is not an integer or string representing an integer",
                              "logit_bias");
        }
        std::string magnitude = digits.substr(first_digit);
        magnitude.erase(0, std::min(magnitude.find_first_not_of('0'), magnitude.size() - 1));
        if (magnitude.size() > 10) {  // beyond any vocabulary (and int64)
            out_of_vocab.push_back(digits[0] == '-' ? "-" + magnitude : magnitude);
            continue;
        }
        const int64_t id = (digits[0] == '-' ? -1 : 1) * std::stoll(magnitude);
        if (id < 0 || id > std::numeric_limits<int32_t>::max() || (limits.vocab_size > 0 && id >= limits.vocab_size)) {
            out_of_vocab.push_back(std::to_string(id));
            continue;
        }
        const float clamped = static_cast<float>(std::clamp(value.get<double>(), -100.0, 100.0));
        const auto same = std::find_if(result.begin(), result.end(), [&](const auto& e) { return e.first == id; });
        if (same != result.end()) {
            same->second = clamped;  // a dict: the last value for an id wins
        } else {
            result.emplace_back(static_cast<int32_t>(id), clamped);
        }
    }
    if (!out_of_vocab.empty()) {
        throw bad_request(fmt::format("token_id(s) [{}] in logit_bias contain out-of-vocab token ids. Vocabulary "
                                      "size: {}",
                                      fmt::join(out_of_vocab, ", "), limits.vocab_size),
                          "logit_bias");
    }
    return result;
}

// vLLM's prompt_logprobs rules: -1 asks for the whole vocabulary; never with a real stream; capped by
// --max-logprobs.
std::optional<int> parse_prompt_logprobs(const json& body, const ProtocolLimits& limits) {
    std::optional<int> requested = get_int(body, "prompt_logprobs");
    if (!requested)
        return std::nullopt;
    const bool stream = get_bool(body, "stream").value_or(false);
    if (stream && (*requested > 0 || *requested == -1))
        throw bad_request("`prompt_logprobs` are not available when `stream=True`.", "prompt_logprobs");
    if (*requested < 0 && *requested != -1)
        throw bad_request("`prompt_logprobs` must be a positive value or -1.", "prompt_logprobs");
    if (stream)
        return std::nullopt;  // 0 with a stream: accepted, but streamed chunks never carry prompt logprobs
    if (*requested == -1) {
        if (limits.vocab_size <= 0)
            throw bad_request("`prompt_logprobs=-1` needs the model's vocabulary size", "prompt_logprobs");
        requested = limits.vocab_size;
    }
    if (limits.max_logprobs >= 0 && *requested > limits.max_logprobs) {
        throw bad_request(fmt::format("Requested prompt logprobs of {}, which is greater than max allowed: {}",
                                      *requested, limits.max_logprobs),
                          "prompt_logprobs");
    }
    return requested;
}

// Structured output needs constrained decoding, which k2 does not have: refuse rather than return
// unconstrained text that the client would take for schema-valid JSON.
void check_response_format(const json& body) {
    if (const json* format = find(body, "response_format")) {
        if (!format->is_object() || !format->contains("type") || !(*format)["type"].is_string())
            throw bad_request("'response_format' must be an object with a string 'type'", "response_format");
        const std::string type = (*format)["type"].get<std::string>();
        if (type == "json_object" || type == "json_schema" || type == "structural_tag") {
            throw bad_request(fmt::format("response_format type '{}' is not supported: k2 has no structured-output "
                                          "(constrained) decoding; only {{\"type\": \"text\"}} is accepted",
                                          type),
                              "response_format");
        }
        if (type != "text") {
            throw bad_request(fmt::format("'response_format.type' must be 'text', 'json_object', 'json_schema' or "
                                          "'structural_tag', got '{}'",
                                          type),
                              "response_format");
        }
    }
    for (const char* key : {"guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs"}) {
        if (find(body, key))
            throw bad_request(fmt::format("{} is not supported: k2 has no structured-output decoding", key), key);
    }
}

// The fields chat and completions share: vLLM's SamplingParams checks (vllm/sampling_params.py).
SamplingParams parse_common_sampling(const json& body, const GenerationDefaults& defaults,
                                     const ProtocolLimits& limits) {
    SamplingParams p;
    p.n = get_int(body, "n").value_or(1);
    if (p.n < 1)
        throw bad_request(fmt::format("n must be at least 1, got {}.", p.n), "n");
    if (p.n > limits.max_n)
        throw bad_request(fmt::format("n must be at most {}, got {}.", limits.max_n, p.n), "n");
    // best_of = n is plain sampling; more would need ranking by cumulative logprob, which k2 does not do (vLLM's
    // V1 engine refuses best_of > 1 too).
    if (const std::optional<int> best_of = get_int(body, "best_of")) {
        if (*best_of < p.n) {
            throw bad_request(
                fmt::format("best_of must be greater than or equal to n, got n={} and best_of={}.", p.n, *best_of),
                "best_of");
        }
        if (*best_of > p.n) {
            throw bad_request(fmt::format("best_of > n is not supported (got n={} and best_of={}); use n.", p.n,
                                          *best_of),
                              "best_of");
        }
    }
    p.temperature = get_number(body, "temperature").value_or(defaults.temperature.value_or(1.0));
    if (p.temperature < 0.0) {
        throw bad_request(fmt::format("temperature must be non-negative, got {}.", p.temperature), "temperature");
    }
    p.top_p = get_number(body, "top_p").value_or(defaults.top_p.value_or(1.0));
    if (!(p.top_p > 0.0 && p.top_p <= 1.0)) {
        throw bad_request(fmt::format("top_p must be in (0, 1], got {}.", p.top_p), "top_p");
    }
    p.top_k = get_int(body, "top_k").value_or(defaults.top_k.value_or(0));
    if (p.top_k < -1) {
        throw bad_request(fmt::format("top_k must be 0 (disable), or at least 1, got {}.", p.top_k), "top_k");
    }
    if (p.top_k == -1)
        p.top_k = 0;
    p.min_p = get_number(body, "min_p").value_or(defaults.min_p.value_or(0.0));
    if (!(p.min_p >= 0.0 && p.min_p <= 1.0)) {
        throw bad_request(fmt::format("min_p must be in [0, 1], got {}.", p.min_p), "min_p");
    }
    p.presence_penalty = get_number(body, "presence_penalty").value_or(0.0);
    if (p.presence_penalty < -2.0 || p.presence_penalty > 2.0) {
        throw bad_request(fmt::format("presence_penalty must be in [-2, 2], got {}.", p.presence_penalty),
                          "presence_penalty");
    }
    p.frequency_penalty = get_number(body, "frequency_penalty").value_or(0.0);
    if (p.frequency_penalty < -2.0 || p.frequency_penalty > 2.0) {
        throw bad_request(fmt::format("frequency_penalty must be in [-2, 2], got {}.", p.frequency_penalty),
                          "frequency_penalty");
    }
    p.repetition_penalty = get_number(body, "repetition_penalty").value_or(defaults.repetition_penalty.value_or(1.0));
    if (p.repetition_penalty <= 0.0) {
        throw bad_request(fmt::format("repetition_penalty must be greater than zero, got {}.", p.repetition_penalty),
                          "repetition_penalty");
    }
    p.seed = get_int64(body, "seed");
    if (const json* stop = find(body, "stop")) {
        if (stop->is_string()) {
            p.stop.push_back(stop->get<std::string>());
        } else if (stop->is_array()) {
            for (const json& s : *stop) {
                if (!s.is_string())
                    throw bad_request("'stop' must be a string or a list of strings", "stop");
                p.stop.push_back(s.get<std::string>());
            }
        } else {
            throw bad_request("'stop' must be a string or a list of strings", "stop");
        }
        if (p.stop.size() > kMaxStopStrings) {
            throw bad_request(fmt::format("'stop' has {} strings; at most {} are allowed.", p.stop.size(),
                                          kMaxStopStrings),
                              "stop");
        }
        for (const std::string& s : p.stop) {
            if (s.empty())
                throw bad_request("stop cannot contain an empty string.", "stop");
            if (s.size() > kMaxStopStringBytes) {
                throw bad_request(fmt::format("a 'stop' string has {} bytes; at most {} are allowed.", s.size(),
                                              kMaxStopStringBytes),
                                  "stop");
            }
        }
    }
    p.include_stop_str_in_output = get_bool(body, "include_stop_str_in_output").value_or(false);
    if (const json* ids = find(body, "stop_token_ids")) {
        if (!ids->is_array())
            throw bad_request("'stop_token_ids' must be a list of integers", "stop_token_ids");
        for (const json& id : *ids) {
            if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
                (limits.vocab_size > 0 && id.get<int64_t>() >= limits.vocab_size)) {
                throw bad_request(fmt::format("stop_token_ids: {} is not a token id of this model", id.dump()),
                                  "stop_token_ids");
            }
            p.stop_token_ids.push_back(id.get<int32_t>());
        }
    }
    p.ignore_eos = get_bool(body, "ignore_eos").value_or(false);
    p.min_tokens = get_int(body, "min_tokens").value_or(0);
    if (p.min_tokens < 0) {
        throw bad_request(fmt::format("min_tokens must be greater than or equal to 0, got {}.", p.min_tokens),
                          "min_tokens");
    }
    p.skip_special_tokens = get_bool(body, "skip_special_tokens").value_or(true);
    p.prompt_logprobs = parse_prompt_logprobs(body, limits);
    p.logit_bias = parse_logit_bias(body, limits);
    check_response_format(body);
    return p;
}

void check_logprobs_limit(int requested, const ProtocolLimits& limits, const char* param) {
    if (limits.max_logprobs >= 0 && requested > limits.max_logprobs) {
        throw bad_request(fmt::format("Requested sample logprobs of {}, which is greater than max allowed: {}",
                                      requested, limits.max_logprobs),
                          param);
    }
}

// stream / stream_options; returns include_usage.
void parse_stream(const json& body, bool& stream, bool& include_usage, bool& continuous_usage_stats) {
    stream = get_bool(body, "stream").value_or(false);
    const json* options = find(body, "stream_options");
    if (!options)
        return;
    if (!stream)
        throw bad_request("Stream options can only be defined when `stream=True`.", "stream_options");
    if (!options->is_object())
        throw bad_request("'stream_options' must be an object", "stream_options");
    include_usage = get_bool(*options, "include_usage").value_or(true);
    continuous_usage_stats = get_bool(*options, "continuous_usage_stats").value_or(false);
}

void check_max_tokens_and_min_tokens(std::optional<int> max_tokens, const SamplingParams& p) {
    if (max_tokens && *max_tokens < 1) {
        throw bad_request(fmt::format("max_tokens must be at least 1, got {}.", *max_tokens), "max_tokens");
    }
    if (max_tokens && p.min_tokens > *max_tokens) {
        throw bad_request(
            fmt::format("min_tokens must be less than or equal to max_tokens={}, got {}.", *max_tokens, p.min_tokens),
            "min_tokens");
    }
}

void parse_tool_choice(const json& body, ChatRequest& req, bool enable_auto_tool_choice) {
    const json* tools = find(body, "tools");
    if (tools) {
        if (!tools->is_array())
            throw bad_request("'tools' must be a list", "tools");
        if (tools->size() > kMaxTools) {
            throw bad_request(fmt::format("'tools' has {} entries; at most {} are allowed.", tools->size(), kMaxTools),
                              "tools");
        }
        if (const size_t bytes = tools->dump().size(); bytes > kMaxToolsBytes) {
            throw bad_request(fmt::format("'tools' takes {} bytes of JSON; at most {} are allowed.", bytes,
                                          kMaxToolsBytes),
                              "tools");
        }
        for (const json& tool : *tools) {
            if (!tool.is_object() || !tool.contains("function") || !tool["function"].is_object() ||
                !tool["function"].contains("name") || !tool["function"]["name"].is_string()) {
                throw bad_request(
                    "each entry of 'tools' must be {\"type\": \"function\", \"function\": {\"name\": ...}}", "tools");
            }
        }
        req.tools = *tools;
    }
    const bool has_tools = tools && !tools->empty();
    const json* choice = find(body, "tool_choice");
    if (choice && !tools)
        throw bad_request("When using `tool_choice`, `tools` must be set.", "tool_choice");
    if (!choice) {
        req.tool_choice = has_tools ? ToolChoice::kAuto : ToolChoice::kNone;
    } else if (choice->is_string()) {
        const std::string value = choice->get<std::string>();
        if (value == "none") {
            req.tool_choice = ToolChoice::kNone;
        } else if (value == "auto") {
            req.tool_choice = has_tools ? ToolChoice::kAuto : ToolChoice::kNone;
        } else if (value == "required") {
            req.tool_choice = has_tools ? ToolChoice::kRequired : ToolChoice::kNone;
        } else {
            throw bad_request(fmt::format("Invalid value for `tool_choice`: '{}' (expected none, auto, required or "
                                          "a named function)",
                                          value),
                              "tool_choice");
        }
    } else if (choice->is_object() && choice->contains("function") && (*choice)["function"].is_object() &&
               (*choice)["function"].contains("name") && (*choice)["function"]["name"].is_string()) {
        req.named_tool = (*choice)["function"]["name"].get<std::string>();
        req.tool_choice = ToolChoice::kNamed;
        bool found = false;
        for (const json& tool : req.tools)
            found = found || tool["function"]["name"] == req.named_tool;
        if (!found) {
            throw bad_request("The tool specified in `tool_choice` does not match any of the specified `tools`",
                              "tool_choice");
        }
    } else {
        throw bad_request("Invalid value for `tool_choice`", "tool_choice");
    }
    if (req.tool_choice == ToolChoice::kAuto && !enable_auto_tool_choice) {
        throw bad_request("\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set",
                          "tool_choice");
    }
}

}  // namespace

json error_json(int status, const std::string& message, const std::string& type,
                const std::optional<std::string>& param) {
    return {
        {"error",
         {{"message", message}, {"type", type}, {"param", param ? json(*param) : json(nullptr)}, {"code", status}}}};
}

std::string dump_json(const json& value) {
    return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string sse_event(const std::string& payload) {
    return "data: " + payload + "\n\n";
}

GenerationDefaults parse_generation_defaults(const json& config) {
    GenerationDefaults d;
    if (!config.is_object())
        return d;
    auto number = [&](const char* key) -> std::optional<double> {
        const auto it = config.find(key);
        return it != config.end() && it->is_number() ? std::optional<double>(it->get<double>()) : std::nullopt;
    };
    d.temperature = number("temperature");
    d.top_p = number("top_p");
    if (auto v = number("top_k"))
        d.top_k = static_cast<int>(*v);
    d.min_p = number("min_p");
    d.repetition_penalty = number("repetition_penalty");
    if (auto v = number("max_new_tokens"))
        d.max_new_tokens = static_cast<int>(*v);
    return d;
}

ChatRequest parse_chat_request(const json& body, const GenerationDefaults& defaults, const ProtocolLimits& limits,
                               bool enable_auto_tool_choice) {
    ChatRequest req;
    req.model = get_string(body, "model").value_or("");
    const json* messages = find(body, "messages");
    if (!messages)
        throw bad_request("Field required: 'messages'", "messages");
    if (!messages->is_array() || messages->empty())
        throw bad_request("'messages' must be a non-empty list", "messages");
    for (const json& m : *messages) {
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
            throw bad_request("each message must be an object with a string 'role'", "messages");
        }
    }
    req.messages = *messages;
    parse_tool_choice(body, req, enable_auto_tool_choice);
    parse_stream(body, req.stream, req.include_usage, req.continuous_usage_stats);
    req.params = parse_common_sampling(body, defaults, limits);
    req.logprobs = get_bool(body, "logprobs").value_or(false);
    req.top_logprobs = get_int(body, "top_logprobs").value_or(0);
    if (req.top_logprobs < 0)
        throw bad_request("`top_logprobs` must be a positive value.", "top_logprobs");
    if (req.top_logprobs > 0 && !req.logprobs) {
        throw bad_request("when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs");
    }
    if (req.logprobs) {
        check_logprobs_limit(req.top_logprobs, limits, "top_logprobs");
        req.params.logprobs = req.top_logprobs;
    }
    req.max_tokens = get_int(body, "max_completion_tokens");
    if (!req.max_tokens)
        req.max_tokens = get_int(body, "max_tokens");
    check_max_tokens_and_min_tokens(req.max_tokens, req.params);
    req.add_generation_prompt = get_bool(body, "add_generation_prompt").value_or(true);
    req.continue_final_message = get_bool(body, "continue_final_message").value_or(false);
    if (req.add_generation_prompt && req.continue_final_message) {
        throw bad_request("Cannot set both `continue_final_message` and `add_generation_prompt` to True.");
    }
    req.echo = get_bool(body, "echo").value_or(false);
    if (const json* kwargs = find(body, "chat_template_kwargs")) {
        if (!kwargs->is_object())
            throw bad_request("'chat_template_kwargs' must be an object", "chat_template_kwargs");
        req.chat_template_kwargs = *kwargs;
    }
    req.request_id = get_string(body, "request_id").value_or("");
    return req;
}

CompletionRequest parse_completion_request(const json& body, const GenerationDefaults& defaults,
                                           const ProtocolLimits& limits) {
    CompletionRequest req;
    req.model = get_string(body, "model").value_or("");
    const json* prompt = find(body, "prompt");
    if (!prompt)
        throw bad_request("Either prompt or prompt_embeds must be provided and non-empty.", "prompt");
    auto token_list = [&](const json& list) {
        CompletionPrompt p;
        for (const json& id : list) {
            if (!id.is_number_integer())
                throw bad_request("'prompt' token ids must be integers", "prompt");
            const int64_t value = id.get<int64_t>();
            if (value < 0 || (limits.vocab_size > 0 && value >= limits.vocab_size)) {
                throw bad_request(fmt::format("Token id {} is out of vocabulary", value), "prompt");
            }
            p.token_ids.push_back(static_cast<int32_t>(value));
        }
        if (p.token_ids.empty())
            throw bad_request("The prompt cannot be empty.", "prompt");
        return p;
    };
    if (prompt->is_string()) {
        req.prompts.push_back({prompt->get<std::string>(), {}});
    } else if (prompt->is_array() && !prompt->empty()) {
        const json& first = (*prompt)[0];
        if (first.is_number_integer()) {
            req.prompts.push_back(token_list(*prompt));
        } else {
            for (const json& item : *prompt) {
                if (item.is_string()) {
                    req.prompts.push_back({item.get<std::string>(), {}});
                } else if (item.is_array()) {
                    req.prompts.push_back(token_list(item));
                } else {
                    throw bad_request(
                        "'prompt' must be a string, a list of strings, a list of token ids or a list "
                        "of token-id lists",
                        "prompt");
                }
            }
        }
    } else {
        throw bad_request(
            "'prompt' must be a non-empty string, a list of strings, a list of token ids or a list of "
            "token-id lists",
            "prompt");
    }
    if (req.prompts.size() > 1024)
        throw bad_request("at most 1024 prompts per request", "prompt");
    parse_stream(body, req.stream, req.include_usage, req.continuous_usage_stats);
    req.params = parse_common_sampling(body, defaults, limits);
    req.echo = get_bool(body, "echo").value_or(false);
    if (const std::optional<int> logprobs = get_int(body, "logprobs")) {
        if (*logprobs < 0)
            throw bad_request("`logprobs` must be a positive value.", "logprobs");
        check_logprobs_limit(*logprobs, limits, "logprobs");
        req.logprobs = logprobs;
        req.params.logprobs = logprobs;
    }
    if (const std::optional<int> max_tokens = get_int(body, "max_tokens")) {
        req.max_tokens = *max_tokens;
        req.max_tokens_given = true;
    }
    check_max_tokens_and_min_tokens(req.max_tokens, req.params);
    req.add_special_tokens = get_bool(body, "add_special_tokens").value_or(true);
    if (get_string(body, "suffix"))
        throw bad_request("suffix is not currently supported", "suffix");
    req.request_id = get_string(body, "request_id").value_or("");
    return req;
}

int resolve_max_tokens(int num_prompt_tokens, std::optional<int> requested, int max_model_len,
                       std::optional<int> generation_max_new_tokens) {
    if (num_prompt_tokens >= max_model_len) {
        throw bad_request(
            fmt::format("This model's maximum context length is {} tokens. However, your request has {} "
                        "input tokens. Please reduce the length of the input messages.",
                        max_model_len, num_prompt_tokens));
    }
    const int remaining = max_model_len - num_prompt_tokens;
    if (requested && *requested > remaining) {
        throw bad_request(
            fmt::format("'max_tokens' or 'max_completion_tokens' is too large: {}. This model's maximum "
                        "context length is {} tokens and your request has {} input tokens ({} > {} - {}).",
                        *requested, max_model_len, num_prompt_tokens, *requested, max_model_len, num_prompt_tokens));
    }
    int max_tokens = requested.value_or(remaining);
    if (generation_max_new_tokens && *generation_max_new_tokens > 0) {
        max_tokens = std::min(max_tokens, *generation_max_new_tokens);
    }
    return max_tokens;
}

namespace {

// Deepest array/object nesting of a JSON text (strings skipped), counted before parsing: copying or
// rendering a parsed value recurses once per level, so a 400 KB body of 200k '[' overflowed the stack
// (crafted while writing fuzz_openai_request). Python's json gives up near 1000 levels too.
constexpr size_t kMaxJsonDepth = 512;

size_t json_nesting_depth(const std::string& text) {
    size_t depth = 0, max_depth = 0;
    bool in_string = false, escaped = false;
    for (const char c : text) {
        if (in_string) {
            in_string = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            max_depth = std::max(max_depth, ++depth);
        } else if ((c == ']' || c == '}') && depth > 0) {
            --depth;
        }
    }
    return max_depth;
}

}  // namespace

json parse_body(const std::string& body) {
    if (json_nesting_depth(body) > kMaxJsonDepth) {
        throw ApiError(400, fmt::format("The request body nests JSON deeper than {} levels.", kMaxJsonDepth),
                       "BadRequestError");
    }
    json value;
    try {
        value = json::parse(body);
    } catch (const json::exception& error) {
        // parse_error, or out_of_range for a number beyond double (1e400): nlohmann names the byte and the reason
        // (e.g. "ill-formed UTF-8 byte", "number overflow parsing '1e400'"), which is what a client needs.
        throw ApiError(400, fmt::format("The request body is not valid JSON: {}", error.what()), "BadRequestError");
    }
    if (!value.is_object())
        throw ApiError(400, "The request body must be a JSON object.", "BadRequestError");
    return value;
}

bool constant_time_equals(const std::string& a, const std::string& b) {
    // Compares every byte of the longer input whatever the contents; only the lengths may leak.
    const size_t n = std::max(a.size(), b.size());
    unsigned char diff = static_cast<unsigned char>(a.size() != b.size());
    for (size_t i = 0; i < n; ++i) {
        const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
        const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
        diff |= static_cast<unsigned char>(x ^ y);
    }
    return diff == 0;
}

int64_t parse_human_int(const std::string& text, const std::string& flag) {
    K2_CHECK(!text.empty(), "{}: empty value", flag);
    size_t digits_end = 0;
    while (digits_end < text.size() &&
           (std::isdigit(static_cast<unsigned char>(text[digits_end])) || text[digits_end] == '.')) {
        ++digits_end;
    }
    const std::string number = text.substr(0, digits_end);
    const std::string suffix = text.substr(digits_end);
    K2_CHECK(!number.empty() && suffix.size() <= 1 && std::count(number.begin(), number.end(), '.') <= 1,
             "{}: '{}' is not a number (examples: 2048, 32k = 32000, 32K = 32768)", flag, text);
    double multiplier = 1.0;
    bool binary = false;
    if (!suffix.empty()) {
        switch (suffix[0]) {
            case 'k':
                multiplier = 1e3;
                break;
            case 'm':
                multiplier = 1e6;
                break;
            case 'g':
                multiplier = 1e9;
                break;
            case 'K':
                multiplier = 1024.0;
                binary = true;
                break;
            case 'M':
                multiplier = 1024.0 * 1024.0;
                binary = true;
                break;
            case 'G':
                multiplier = 1024.0 * 1024.0 * 1024.0;
                binary = true;
                break;
            default:
                K2_FAIL("{}: unknown suffix '{}' in '{}' (k, m, g = 10^3, 10^6, 10^9; K, M, G = 2^10, 2^20, 2^30)",
                        flag, suffix, text);
        }
    }
    K2_CHECK(!(binary && number.find('.') != std::string::npos),
             "{}: '{}': decimals are not allowed with a binary suffix (K, M, G)", flag, text);
    const double value = std::stod(number) * multiplier;
    K2_CHECK(value == std::floor(value) && value <= 9.0e18, "{}: '{}' is not a whole number", flag, text);
    return static_cast<int64_t>(value);
}

}  // namespace k2::server

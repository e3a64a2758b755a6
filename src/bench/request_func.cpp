#include "bench/request_func.h"

#include <exception>

#include "core/error.h"

namespace k2::bench {

Backend parse_backend(const std::string& name) {
    if (name == "openai" || name == "vllm") {
        return Backend::kCompletions;
    }
    if (name == "openai-chat") {
        return Backend::kChat;
    }
    K2_FAIL("--backend: unsupported backend '{}' (expected openai, vllm or openai-chat)", name);
}

const char* default_endpoint(Backend backend) {
    switch (backend) {
        case Backend::kCompletions: return "/v1/completions";
        case Backend::kChat: return "/v1/chat/completions";
    }
    return "";
}

std::vector<std::string> SseParser::feed(std::string_view bytes) {
    std::vector<std::string> events;
    for (const char c : bytes) {
        if (c == '\n') {
            take_line(m_line, events);
            m_line.clear();
        } else {
            m_line.push_back(c);
        }
    }
    return events;
}

std::vector<std::string> SseParser::finish() {
    std::vector<std::string> events;
    if (!m_line.empty()) {
        take_line(m_line, events);
        m_line.clear();
    }
    take_line("", events);
    return events;
}

void SseParser::take_line(std::string_view line, std::vector<std::string>& events) {
    if (!line.empty() && line.back() == '\r') {
        line.remove_suffix(1);
    }
    if (line.empty()) {
        // A blank line dispatches the event.
        if (m_has_data) {
            events.push_back(std::move(m_data));
        }
        m_data.clear();
        m_has_data = false;
        return;
    }
    if (line.front() == ':' || !line.starts_with("data:")) {
        return;  // comment, or a field the benchmark does not use (event:, id:, retry:)
    }
    std::string_view value = line.substr(5);
    if (value.starts_with(' ')) {
        value.remove_prefix(1);
    }
    if (m_has_data) {
        m_data.push_back('\n');
    }
    m_data.append(value);
    m_has_data = true;
}

nlohmann::json build_payload(const RequestInput& input, Backend backend) {
    nlohmann::json payload = {{"model", input.model}};
    switch (backend) {
        case Backend::kCompletions:
            payload["prompt"] = input.prompt;
            payload["repetition_penalty"] = 1.0;
            payload["max_tokens"] = input.output_len;
            break;
        case Backend::kChat:
            payload["messages"] = nlohmann::json::array(
                {{{"role", "user"},
                  {"content", nlohmann::json::array({{{"type", "text"}, {"text", input.prompt}}})}}});
            payload["max_completion_tokens"] = input.output_len;
            break;
    }
    payload["stream"] = true;
    payload["stream_options"] = {{"include_usage", true}};
    if (input.ignore_eos) {
        payload["ignore_eos"] = true;
    }
    for (const auto& [key, value] : input.extra_body.items()) {
        payload[key] = value;
    }
    return payload;
}

namespace {

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

// Consumes the SSE events of one response (vLLM's async_request_openai_completions / _chat_completions).
class StreamMeasurer {
public:
    StreamMeasurer(Backend backend, Clock::time_point bench_start, RequestOutput& output)
        : m_backend(backend), m_bench_start(bench_start), m_output(output), m_most_recent(output.start_time) {}

    void on_event(const std::string& data);
    bool first_token_seen() const { return m_first_token_seen; }
    bool done() const { return m_done; }
    double most_recent() const { return m_most_recent; }

private:
    Backend m_backend;
    Clock::time_point m_bench_start;
    RequestOutput& m_output;
    double m_most_recent;
    bool m_first_token_seen = false;
    bool m_done = false;
};

void StreamMeasurer::on_event(const std::string& data) {
    if (m_done || data == "[DONE]") {
        m_done = true;
        return;
    }
    const double now = seconds_since(m_bench_start);
    const nlohmann::json chunk = nlohmann::json::parse(data);
    if (chunk.contains("error")) {
        K2_FAIL("server error in stream: {}", chunk["error"].dump());
    }
    const auto choices = chunk.find("choices");
    if (choices != chunk.end() && choices->is_array() && !choices->empty()) {
        const nlohmann::json& choice = (*choices)[0];
        const nlohmann::json* text = nullptr;
        if (m_backend == Backend::kCompletions) {
            text = choice.contains("text") ? &choice["text"] : nullptr;
        } else if (choice.contains("delta") && choice["delta"].contains("content")) {
            text = &choice["delta"]["content"];
        }
        if (!m_first_token_seen) {
            m_first_token_seen = true;
            m_output.ttft = now - m_output.start_time;
        } else {
            m_output.itl.push_back(now - m_most_recent);
        }
        m_most_recent = now;
        if (text != nullptr && text->is_string()) {
            m_output.generated_text += text->get<std::string>();
        }
    } else if (const auto usage = chunk.find("usage"); usage != chunk.end() && usage->is_object()) {
        if (usage->contains("completion_tokens") && (*usage)["completion_tokens"].is_number_integer()) {
            m_output.output_tokens = (*usage)["completion_tokens"].get<int>();
        }
        if (usage->contains("prompt_tokens") && (*usage)["prompt_tokens"].is_number_integer()) {
            m_output.prompt_len = (*usage)["prompt_tokens"].get<int>();
        }
        // The chat request function moves its clock on every message, the usage one included.
        if (m_backend == Backend::kChat) {
            m_most_recent = now;
        }
    }
}

}  // namespace

RequestOutput send_request(const RequestInput& input, Backend backend, Clock::time_point bench_start) {
    RequestOutput output;
    output.prompt_len = input.prompt_len;
    HttpRequest request;
    request.method = "POST";
    request.url = input.url;
    request.headers = {{"Content-Type", "application/json"}, {"x-request-id", input.request_id}};
    if (!input.api_key.empty()) {
        request.headers.emplace_back("Authorization", "Bearer " + input.api_key);
    }
    request.body = build_payload(input, backend).dump();
    output.start_time = seconds_since(bench_start);
    StreamMeasurer measurer(backend, bench_start, output);
    SseParser parser;
    std::string error_body;
    try {
        const HttpHead head = http_stream(request, [&](const HttpHead& response, std::string_view piece) {
            if (response.status != 200) {
                error_body.append(piece.substr(0, std::min<size_t>(piece.size(), 2000)));
                return true;
            }
            for (const std::string& event : parser.feed(piece)) {
                measurer.on_event(event);
            }
            // After [DONE] the request is complete; waiting for the server to end the body or close the
            // connection would only hold a --max-concurrency slot longer.
            return !measurer.done();
        });
        if (head.status != 200) {
            output.error = fmt::format("HTTP {} {}: {}", head.status, head.reason, error_body.substr(0, 1000));
            return output;
        }
        for (const std::string& event : parser.finish()) {
            measurer.on_event(event);
        }
    } catch (const std::exception& e) {
        output.error = e.what();
        return output;
    }
    if (!measurer.first_token_seen()) {
        output.error = "Never received a valid chunk to calculate TTFT. This response will be marked as failed!";
        return output;
    }
    output.latency = measurer.most_recent() - output.start_time;
    output.success = true;
    return output;
}

}  // namespace k2::bench

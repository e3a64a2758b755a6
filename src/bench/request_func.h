// One streamed benchmark request against an OpenAI-compatible server, measured as vLLM's request functions
// do (reference/vllm.md §4.4): TTFT at the first SSE event with non-empty choices, an ITL gap per later one.
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "bench/http_client.h"
#include "bench/metrics.h"

namespace k2::bench {

using Clock = std::chrono::steady_clock;

enum class Backend { kCompletions, kChat };

// "openai" and "vllm" -> completions, "openai-chat" -> chat; throws k2::Error naming --backend otherwise.
Backend parse_backend(const std::string& name);
const char* default_endpoint(Backend backend);

// Splits a Server-Sent Events stream into the data of each event (multi-line data joined by '\n');
// ":" comment lines and other fields are skipped.
class SseParser {
public:
    std::vector<std::string> feed(std::string_view bytes);
    std::vector<std::string> finish();  // an event not closed by a blank line when the stream ended

private:
    void take_line(std::string_view line, std::vector<std::string>& events);

    std::string m_line;
    std::string m_data;
    bool m_has_data = false;
};

struct RequestInput {
    Url url;  // base URL + endpoint
    std::string model;
    std::string prompt;
    int prompt_len = 0;
    int output_len = 0;
    bool ignore_eos = false;
    std::string request_id;
    nlohmann::json extra_body = nlohmann::json::object();  // sampling overrides merged into the payload
    std::string api_key;                                   // Authorization: Bearer, when not empty
};

nlohmann::json build_payload(const RequestInput& input, Backend backend);

// Never throws: transport and protocol failures come back as success = false with the error text.
RequestOutput send_request(const RequestInput& input, Backend backend, Clock::time_point bench_start);

}  // namespace k2::bench

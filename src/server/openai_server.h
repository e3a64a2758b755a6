// The OpenAI-compatible routes over an Engine (reference/vllm.md §2): /v1/chat/completions, /v1/completions,
// /v1/models, /tokenize, /detokenize, /health, /ping, /version, /metrics. Plugs into HttpServer as its handler.
// Also the web chat page at / and /chat (server/web_chat.h) unless disabled.
//
// Threading: handle() runs on a connection strand and never blocks: generation requests are submitted to
// the engine, whose thread wakes the strand through RequestStream::set_notify.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "server/http_server.h"
#include "server/openai_protocol.h"
#include "server/replica_router.h"

namespace k2 {
class Engine;
class Tokenizer;
}  // namespace k2

namespace k2::server {

struct OpenAiServerConfig {
    std::vector<std::string> served_model_names;  // first one is echoed in responses
    std::string model_root;                       // `root` of /v1/models cards
    std::vector<std::string> api_keys;            // empty: no authentication
    bool enable_auto_tool_choice = false;         // with --tool-call-parser kimi_k2
    std::string response_role = "assistant";
    std::string chat_template;  // template source; empty: the tokenizer's
    GenerationDefaults generation_defaults;
    ProtocolLimits limits;
    bool enable_log_requests = false;
    bool enable_force_include_usage = false;
    bool enable_web_ui = true;  // the chat page at / and /chat (server/web_chat.h)
    std::string version;
};

// The engine side of the server, set once the model is loaded (before that /health answers 503).
struct EngineHandle {
    std::shared_ptr<Engine> engine;  // with DP replicas: the first (model config, max_model_len)
    std::shared_ptr<const Tokenizer> tokenizer;
    std::shared_ptr<ReplicaRouter> replicas;  // DP replicas (-dp N); null: `engine` only

    // The engine a new request goes to: DP engine `dp_rank` (checked by the caller), or with dp_rank -1 vLLM's DP
    // load balancing when there are replicas.
    std::shared_ptr<Engine> pick(int dp_rank = -1) const {
        if (replicas && dp_rank >= 0)
            return replicas->engines()[static_cast<size_t>(dp_rank)];
        return replicas ? replicas->pick() : engine;
    }
    std::vector<std::shared_ptr<Engine>> all() const {
        return replicas ? replicas->engines() : std::vector<std::shared_ptr<Engine>>{engine};
    }
};

class OpenAiServer : public std::enable_shared_from_this<OpenAiServer> {
public:
    explicit OpenAiServer(OpenAiServerConfig config);

    void set_engine(EngineHandle handle);
    // A rank of the parallel job died: /health answers 503 from now on (the process is about to exit).
    void set_failed(const std::string& reason);
    void handle(HttpRequest request, std::shared_ptr<ResponseWriter> writer);
    int num_active_requests() const { return m_num_active.load(); }

    const OpenAiServerConfig& config() const { return m_config; }
    // Used by the generation jobs.
    std::shared_ptr<const EngineHandle> engine() const;
    void request_started() { ++m_num_active; }
    void request_finished() { --m_num_active; }

private:
    bool authorized(const HttpRequest& request) const;
    void handle_health(const std::shared_ptr<ResponseWriter>& writer) const;
    HttpResponse models() const;
    HttpResponse metrics() const;
    HttpResponse tokenize(const nlohmann::ordered_json& body) const;
    HttpResponse detokenize(const nlohmann::ordered_json& body) const;
    void check_model(const std::string& model) const;

    OpenAiServerConfig m_config;
    mutable std::mutex m_mutex;
    std::shared_ptr<const EngineHandle> m_engine;
    std::atomic<int> m_num_active{0};
    std::atomic<bool> m_failed{false};
    int64_t m_created = 0;
};

HttpResponse json_response(int status, const nlohmann::ordered_json& body);
HttpResponse error_response(const ApiError& error);

// Generation routes (generation.cpp). Throw ApiError for request errors before anything is sent.
void start_chat_completion(OpenAiServer& server, const HttpRequest& request, const nlohmann::ordered_json& body,
                           std::shared_ptr<ResponseWriter> writer);
void start_completion(OpenAiServer& server, const HttpRequest& request, const nlohmann::ordered_json& body,
                      std::shared_ptr<ResponseWriter> writer);

}  // namespace k2::server

#include "server/openai_server.h"

#include <chrono>
#include <random>

#include "core/error.h"
#include "core/log.h"
#include "engine/engine.h"
#include "server/metrics.h"
#include "server/web_chat.h"
#include "tokenizer/tokenizer.h"

namespace k2::server {

using json = nlohmann::ordered_json;

namespace {

// Routes that stay open with --api-key, as in vLLM (only /v1 is protected there); everything else,
// including unknown paths, needs the key.
bool is_public_path(const std::string& path) {
    return path == "/health" || path == "/ping" || path == "/metrics" || path == "/version" || path == "/tokenize" ||
           path == "/detokenize";
}

std::string random_hex(size_t num_chars) {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out(num_chars, '0');
    for (char& c : out)
        c = kHex[rng() & 15];
    return out;
}

}  // namespace

HttpResponse json_response(int status, const json& body) {
    return {status, "application/json", dump_json(body), {}};
}

HttpResponse error_response(const ApiError& error) {
    return json_response(error.status(), error_json(error.status(), error.what(), error.type(), error.param()));
}

OpenAiServer::OpenAiServer(OpenAiServerConfig config)
    : m_config(std::move(config)),
      m_created(std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
                    .count()) {}

void OpenAiServer::set_engine(EngineHandle handle) {
    auto shared = std::make_shared<const EngineHandle>(std::move(handle));
    const std::lock_guard lock(m_mutex);
    m_engine = std::move(shared);
}

void OpenAiServer::set_failed(const std::string& reason) {
    m_failed = true;
    K2_ERROR("/health is now unhealthy: {}", reason);
}

std::shared_ptr<const EngineHandle> OpenAiServer::engine() const {
    const std::lock_guard lock(m_mutex);
    return m_engine;
}

bool OpenAiServer::authorized(const HttpRequest& request) const {
    if (m_config.api_keys.empty() || request.method == "OPTIONS" || is_public_path(request.path))
        return true;
    const std::string header = request.header("authorization");
    constexpr std::string_view kScheme = "bearer ";
    if (header.size() < kScheme.size())
        return false;
    for (size_t i = 0; i < kScheme.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(header[i])) != kScheme[i])
            return false;
    }
    const std::string presented = header.substr(kScheme.size());
    bool ok = false;
    for (const std::string& key : m_config.api_keys)
        ok = constant_time_equals(presented, key) || ok;
    return ok;
}

void OpenAiServer::check_model(const std::string& model) const {
    if (model.empty())
        return;
    for (const std::string& name : m_config.served_model_names) {
        if (name == model)
            return;
    }
    throw ApiError(404, fmt::format("The model `{}` does not exist.", model), "NotFoundError", "model");
}

void OpenAiServer::handle_health(const std::shared_ptr<ResponseWriter>& writer) const {
    const auto handle = engine();
    bool healthy = handle != nullptr && !m_failed.load();
    for (const auto& replica : healthy ? handle->all() : std::vector<std::shared_ptr<Engine>>{})
        healthy = healthy && replica->healthy();
    writer->send({healthy ? 200 : 503, "", "", {}});
}

HttpResponse OpenAiServer::models() const {
    const auto handle = engine();
    json data = json::array();
    for (const std::string& name : m_config.served_model_names) {
        data.push_back({{"id", name},
                        {"object", "model"},
                        {"created", m_created},
                        {"owned_by", "k2"},
                        {"root", m_config.model_root},
                        {"parent", nullptr},
                        {"max_model_len", handle ? handle->engine->max_model_len() : 0},
                        {"permission", json::array({{{"id", "modelperm-" + random_hex(32)},
                                                     {"object", "model_permission"},
                                                     {"created", m_created},
                                                     {"allow_create_engine", false},
                                                     {"allow_sampling", true},
                                                     {"allow_logprobs", true},
                                                     {"allow_search_indices", false},
                                                     {"allow_view", true},
                                                     {"allow_fine_tuning", false},
                                                     {"organization", "*"},
                                                     {"group", nullptr},
                                                     {"is_blocking", false}}})}});
    }
    return json_response(200, {{"object", "list"}, {"data", data}});
}

HttpResponse OpenAiServer::metrics() const {
    const auto handle = engine();
    std::string text;
    if (handle && handle->replicas) {
        std::vector<EngineStats> stats;
        for (const auto& replica : handle->all())
            stats.push_back(replica->stats());
        text = render_prometheus(stats, m_config.served_model_names.front(), handle->engine->config());
    } else if (handle) {
        text =
            render_prometheus(handle->engine->stats(), m_config.served_model_names.front(), handle->engine->config());
    }
    text += render_server_metrics(m_num_active.load(), m_config.served_model_names.front());
    return {200, "text/plain; version=0.0.4; charset=utf-8", std::move(text), {}};
}

HttpResponse OpenAiServer::tokenize(const json& body) const {
    const auto handle = engine();
    if (!handle)
        throw ApiError(503, "The model is still loading.", "ServiceUnavailableError");
    const Tokenizer& tokenizer = *handle->tokenizer;
    if (body.contains("model") && body["model"].is_string())
        check_model(body["model"].get<std::string>());
    std::vector<int32_t> ids;
    if (body.contains("messages")) {
        if (!body["messages"].is_array())
            throw ApiError(400, "'messages' must be a list", "BadRequestError", "messages");
        json request = {{"messages", body["messages"]},
                        {"add_generation_prompt", body.value("add_generation_prompt", true)}};
        if (body.contains("tools") && body["tools"].is_array())
            request["tools"] = body["tools"];
        std::string text;
        try {
            text = m_config.chat_template.empty()
                       ? tokenizer.apply_chat_template_ordered(request)
                       : tokenizer.apply_chat_template(request, m_config.chat_template, "--chat-template");
        } catch (const Error& e) {
            throw ApiError(400, e.message(), "BadRequestError", "messages");
        }
        ids = tokenizer.encode(text, /*allow_special=*/true);
    } else if (body.contains("prompt") && body["prompt"].is_string()) {
        ids = tokenizer.encode(body["prompt"].get<std::string>(), /*allow_special=*/true);
    } else {
        throw ApiError(400, "/tokenize needs 'prompt' (a string) or 'messages'", "BadRequestError", "prompt");
    }
    json response = {{"count", ids.size()},
                     {"max_model_len", handle->engine->max_model_len()},
                     {"tokens", ids},
                     {"token_strs", nullptr}};
    if (body.value("return_token_strs", false)) {
        json strs = json::array();
        for (const int32_t id : ids)
            strs.push_back(tokenizer.token_bytes(id));
        response["token_strs"] = strs;
    }
    return json_response(200, response);
}

HttpResponse OpenAiServer::detokenize(const json& body) const {
    const auto handle = engine();
    if (!handle)
        throw ApiError(503, "The model is still loading.", "ServiceUnavailableError");
    if (body.contains("model") && body["model"].is_string())
        check_model(body["model"].get<std::string>());
    if (!body.contains("tokens") || !body["tokens"].is_array()) {
        throw ApiError(400, "/detokenize needs 'tokens' (a list of token ids)", "BadRequestError", "tokens");
    }
    std::vector<int32_t> ids;
    const int vocab_size = handle->tokenizer->vocab_size();
    for (const json& id : body["tokens"]) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= vocab_size) {
            throw ApiError(400, fmt::format("Token id {} is out of vocabulary", id.dump()), "BadRequestError",
                           "tokens");
        }
        ids.push_back(id.get<int32_t>());
    }
    return json_response(200, {{"prompt", handle->tokenizer->decode(ids, /*skip_special_tokens=*/false)}});
}

void OpenAiServer::handle(HttpRequest request, std::shared_ptr<ResponseWriter> writer) {
    const std::string& path = request.path;
    const std::string& method = request.method;
    try {
        // The page holds no secret and its own API calls still need the key, so it is served without one.
        if (m_config.enable_web_ui && method == "GET" && is_web_chat_path(path))
            return writer->send(web_chat_response());
        if (!authorized(request)) {
            writer->send(json_response(401, {{"error", "Unauthorized"}}));
            return;
        }
        if (path == "/health" || path == "/ping") {
            if (method != "GET" && !(path == "/ping" && method == "POST"))
                throw ApiError(405, "Method Not Allowed", "MethodNotAllowed");
            handle_health(writer);
            return;
        }
        if (method == "GET") {
            if (path == "/version")
                return writer->send(json_response(200, {{"version", m_config.version}}));
            if (path == "/v1/models")
                return writer->send(models());
            if (path == "/metrics")
                return writer->send(metrics());
        } else if (method == "POST") {
            if (path == "/v1/chat/completions" || path == "/v1/completions") {
                const json body = parse_body(request.body);
                if (!engine())
                    throw ApiError(503, "The model is still loading.", "ServiceUnavailableError");
                if (body.contains("model") && body["model"].is_string())
                    check_model(body["model"].get<std::string>());
                if (path == "/v1/chat/completions") {
                    start_chat_completion(*this, request, body, writer);
                } else {
                    start_completion(*this, request, body, writer);
                }
                return;
            }
            if (path == "/tokenize")
                return writer->send(tokenize(parse_body(request.body)));
            if (path == "/detokenize")
                return writer->send(detokenize(parse_body(request.body)));
        }
        const bool known = path == "/version" || path == "/v1/models" || path == "/metrics" ||
                           path == "/v1/chat/completions" || path == "/v1/completions" || path == "/tokenize" ||
                           path == "/detokenize";
        if (known)
            throw ApiError(405, "Method Not Allowed", "MethodNotAllowed");
        writer->send(json_response(404, {{"detail", "Not Found"}}));
    } catch (const ApiError& e) {
        writer->send(error_response(e));
    } catch (const EngineOverloadedError& e) {
        writer->send(error_response(ApiError(503, e.message(), "ServiceUnavailableError")));
    } catch (const Error& e) {
        writer->send(error_response(ApiError(400, e.message(), "BadRequestError")));
    } catch (const std::exception& e) {
        K2_ERROR("{} {}: {}", method, path, e.what());
        writer->send(error_response(ApiError(500, e.what(), "InternalServerError")));
    }
}

}  // namespace k2::server

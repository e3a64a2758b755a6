// /v1/chat/completions and /v1/completions: one GenerationJob per HTTP request. It submits one engine request
// per prompt (n sequences each), and turns the engine's outputs into vLLM's JSON or SSE chunks on the
// connection's strand, woken by the engine thread through RequestStream::set_notify.
#include <charconv>
#include <chrono>
#include <random>
#include <variant>

#include "core/error.h"
#include "core/log.h"
#include "engine/engine.h"
#include "server/kimi_k2_tool_parser.h"
#include "server/openai_server.h"
#include "tokenizer/tokenizer.h"

namespace k2::server {

using json = nlohmann::ordered_json;

namespace {

enum class Api { kChat, kCompletion };

std::string random_hex(size_t num_chars) {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out(num_chars, '0');
    for (char& c : out)
        c = kHex[rng() & 15];
    return out;
}

int64_t unix_now() {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

json stop_reason_json(const std::variant<std::monostate, std::string, int32_t>& reason) {
    if (const auto* s = std::get_if<std::string>(&reason))
        return *s;
    if (const auto* id = std::get_if<int32_t>(&reason))
        return *id;
    return nullptr;
}

json bytes_json(const std::string& text) {
    json bytes = json::array();
    for (const char c : text)
        bytes.push_back(static_cast<int>(static_cast<unsigned char>(c)));
    return bytes;
}

double clamp_logprob(float logprob) {
    return std::max(static_cast<double>(logprob), -9999.0);
}

// Appends `next` to `into`, joining the argument text of deltas for the same call.
void merge_delta(StreamDelta& into, StreamDelta next) {
    into.content += next.content;
    for (ToolCallDelta& t : next.tool_calls) {
        if (!into.tool_calls.empty() && into.tool_calls.back().index == t.index) {
            into.tool_calls.back().arguments += t.arguments;
        } else {
            into.tool_calls.push_back(std::move(t));
        }
    }
}

struct Choice {
    std::string text;  // everything generated (for non-streaming responses)
    std::vector<TokenLogprobs> logprobs;
    std::unique_ptr<KimiK2StreamingToolParser> parser;  // streaming with tools
    StreamDelta pending;                                // what the forced prefix produced, sent with the first output
    bool started = false;
    bool finished = false;
    std::string finish_reason;
    std::variant<std::monostate, std::string, int32_t> stop_reason;
    int num_output_tokens = 0;
    size_t text_offset = 0;  // completions logprobs: characters emitted so far
};

struct SubRequest {
    std::string engine_id;
    std::shared_ptr<Engine> engine;  // the DP replica it was routed to
    std::shared_ptr<RequestStream> stream;
    int choice_base = 0;
    int num_prompt_tokens = 0;
    std::string echo_text;
    bool wants_prompt_logprobs = false;
    std::vector<TokenLogprobs> prompt_logprobs;  // prompt tokens 1.., from the first output
    int32_t first_prompt_token = 0;              // echo with logprobs: its entry has no logprob
};

class GenerationJob : public std::enable_shared_from_this<GenerationJob> {
public:
    GenerationJob(OpenAiServer& server, std::shared_ptr<const EngineHandle> handle,
                  std::shared_ptr<ResponseWriter> writer, Api api)
        : m_server(server),
          m_handle(std::move(handle)),
          m_writer(std::move(writer)),
          m_api(api),
          m_created(unix_now()) {}

    // Everything the job needs to know before start().
    std::string id;
    std::string model_name;
    bool stream = false;
    bool include_usage = false;
    bool continuous_usage = false;
    bool want_logprobs = false;
    bool tools_active = false;  // run the kimi_k2 parser over the output
    std::string forced_prefix;  // tool_choice required/named: generation starts inside the tool section
    bool tool_choice_forced = false;
    int n = 1;
    std::vector<EngineRequest> requests;
    std::vector<std::string> echo_texts;
    bool echo_logprobs = false;  // completions echo + logprobs: the prompt's tokens lead the logprobs
    int data_parallel_rank = -1;  // X-data-parallel-rank: the DP engine to use; -1: load balancing

    // Submits every engine request; throws (nothing sent yet) when the engine refuses one.
    void start() {
        for (size_t i = 0; i < requests.size(); ++i) {
            SubRequest sub;
            sub.engine_id = requests[i].request_id;
            sub.choice_base = static_cast<int>(i) * n;
            sub.num_prompt_tokens = static_cast<int>(requests[i].prompt_token_ids.size());
            sub.echo_text = i < echo_texts.size() ? echo_texts[i] : "";
            sub.wants_prompt_logprobs = requests[i].params.prompt_logprobs.has_value();
            sub.first_prompt_token = requests[i].prompt_token_ids.empty() ? 0 : requests[i].prompt_token_ids[0];
            try {
                sub.engine = m_handle->pick(data_parallel_rank);
                sub.stream = sub.engine->submit(std::move(requests[i]));
            } catch (...) {
                for (const SubRequest& s : m_subs)
                    s.engine->abort(s.engine_id);
                throw;
            }
            m_subs.push_back(std::move(sub));
        }
        m_choices.resize(m_subs.size() * n);
        for (Choice& choice : m_choices) {
            if (stream && tools_active) {
                choice.parser = std::make_unique<KimiK2StreamingToolParser>();
                choice.pending = choice.parser->push(forced_prefix);  // a named call's header
            }
        }
        m_server.request_started();
        auto self = shared_from_this();
        m_writer->on_disconnect([self] { self->client_gone(); });
        if (stream)
            m_writer->start_stream(200, "text/event-stream", {{"Cache-Control", "no-cache"}});
        for (SubRequest& sub : m_subs) {
            sub.stream->set_notify([self] { self->schedule_drain(); });
        }
        schedule_drain();  // outputs pushed before set_notify
    }

private:
    void schedule_drain() {
        if (m_drain_scheduled.exchange(true))
            return;
        m_writer->post([self = shared_from_this()] { self->drain(); });
    }

    void client_gone() {
        if (m_done)
            return;
        for (const SubRequest& sub : m_subs)
            sub.engine->abort(sub.engine_id);
        if (m_server.config().enable_log_requests)
            K2_INFO("Aborted request {} (client disconnected).", id);
        finish_job();
    }

    void finish_job() {
        if (m_done)
            return;
        m_done = true;
        for (SubRequest& sub : m_subs)
            sub.stream->set_notify(nullptr);  // breaks the job <-> stream cycle
        m_server.request_finished();
    }

    void drain() {
        m_drain_scheduled.store(false);
        if (m_done)
            return;
        try {
            drain_outputs();
        } catch (const std::exception& e) {
            fail(e.what());
        }
    }

    void drain_outputs() {
        bool all_finished = true;
        for (SubRequest& sub : m_subs) {
            // Read before popping: once finished, every output of the stream is already queued.
            const bool finished = sub.stream->all_finished();
            for (RequestOutput& output : sub.stream->try_pop()) {
                if (m_done)
                    return;
                on_output(sub, output);
            }
            all_finished = all_finished && finished;
        }
        if (all_finished && !m_done)
            complete();
    }

    void on_output(SubRequest& sub, RequestOutput& output) {
        Choice& choice = m_choices.at(sub.choice_base + output.index);
        if (output.finish_reason == "error") {
            fail(output.error.empty() ? "engine error" : output.error);
            return;
        }
        if (sub.prompt_logprobs.empty() && !output.prompt_logprobs.empty())
            sub.prompt_logprobs = std::move(output.prompt_logprobs);
        choice.num_output_tokens = output.num_output_tokens;
        for (TokenLogprobs& lp : output.logprobs)
            choice.logprobs.push_back(lp);
        if (output.finished) {
            choice.finished = true;
            choice.finish_reason = output.finish_reason.empty() ? "stop" : output.finish_reason;
            choice.stop_reason = output.stop_reason;
        }
        std::string delta = std::move(output.text_delta);
        if (!choice.started && m_api == Api::kCompletion)
            delta = sub.echo_text + delta;
        choice.text += delta;
        if (stream)
            stream_output(sub, sub.choice_base + output.index, choice, delta, output);
        choice.started = true;
    }

    json usage_json() const {
        int prompt_tokens = 0;
        int completion_tokens = 0;
        for (const SubRequest& sub : m_subs)
            prompt_tokens += sub.num_prompt_tokens;
        for (const Choice& choice : m_choices)
            completion_tokens += choice.num_output_tokens;
        return {{"prompt_tokens", prompt_tokens},
                {"total_tokens", prompt_tokens + completion_tokens},
                {"completion_tokens", completion_tokens},
                {"prompt_tokens_details", nullptr}};
    }

    json chat_logprobs(const std::vector<TokenLogprobs>& entries) const {
        const Tokenizer& tokenizer = *m_handle->tokenizer;
        json content = json::array();
        for (const TokenLogprobs& e : entries) {
            json top = json::array();
            for (const TopLogprob& t : e.top) {
                const std::string& text = tokenizer.token_bytes(t.token_id);
                top.push_back({{"token", text}, {"logprob", clamp_logprob(t.logprob)}, {"bytes", bytes_json(text)}});
            }
            const std::string& text = tokenizer.token_bytes(e.token_id);
            content.push_back({{"token", text},
                               {"logprob", clamp_logprob(e.logprob)},
                               {"bytes", bytes_json(text)},
                               {"top_logprobs", top}});
        }
        return {{"content", content}};
    }

    json completion_logprobs(const std::vector<TokenLogprobs>& entries, size_t& text_offset) const {
        const Tokenizer& tokenizer = *m_handle->tokenizer;
        json offsets = json::array(), token_logprobs = json::array(), tokens = json::array(), tops = json::array();
        for (const TokenLogprobs& e : entries) {
            const std::string& text = tokenizer.token_bytes(e.token_id);
            offsets.push_back(text_offset);
            text_offset += text.size();
            token_logprobs.push_back(clamp_logprob(e.logprob));
            tokens.push_back(text);
            json top = json::object();
            for (const TopLogprob& t : e.top)
                top[tokenizer.token_bytes(t.token_id)] = clamp_logprob(t.logprob);
            tops.push_back(top);
        }
        return {
            {"text_offset", offsets}, {"token_logprobs", token_logprobs}, {"tokens", tokens}, {"top_logprobs", tops}};
    }

    // vLLM's prompt_logprobs: null for the first prompt token, then per position {"<id>": {logprob, rank,
    // decoded_token}} for the prompt token followed by the top alternatives (ranks 1..k).
    json prompt_logprobs_json(const SubRequest& sub) const {
        if (!sub.wants_prompt_logprobs)
            return nullptr;
        const Tokenizer& tokenizer = *m_handle->tokenizer;
        auto entry = [&](int32_t token_id, float logprob, int rank) {
            const int32_t ids[] = {token_id};
            return json{{"logprob", clamp_logprob(logprob)}, {"rank", rank}, {"decoded_token", tokenizer.decode(ids)}};
        };
        json positions = json::array({nullptr});
        for (const TokenLogprobs& e : sub.prompt_logprobs) {
            json position = json::object();
            position[std::to_string(e.token_id)] = entry(e.token_id, e.logprob, e.rank);
            for (size_t r = 0; r < e.top.size(); ++r) {
                const std::string key = std::to_string(e.top[r].token_id);
                if (!position.contains(key))
                    position[key] = entry(e.top[r].token_id, e.top[r].logprob, static_cast<int>(r) + 1);
            }
            positions.push_back(std::move(position));
        }
        return positions;
    }

    // vLLM's echo with logprobs: the first prompt token (no logprob, null top), the prompt logprobs, then
    // the generated tokens' entries.
    json completion_logprobs_with_prompt(const SubRequest& sub, const std::vector<TokenLogprobs>& entries,
                                         size_t& text_offset) const {
        const std::string& first = m_handle->tokenizer->token_bytes(sub.first_prompt_token);
        json result = {{"text_offset", json::array({text_offset})},
                       {"token_logprobs", json::array({nullptr})},
                       {"tokens", json::array({first})},
                       {"top_logprobs", json::array({nullptr})}};
        text_offset += first.size();
        for (const std::vector<TokenLogprobs>* part : {&sub.prompt_logprobs, &entries}) {
            const json more = completion_logprobs(*part, text_offset);
            for (auto& [key, values] : result.items()) {
                for (const json& value : more[key])
                    values.push_back(value);
            }
        }
        return result;
    }

    json chunk_base() const {
        return {{"id", id},
                {"object", m_api == Api::kChat ? "chat.completion.chunk" : "text_completion"},
                {"created", m_created},
                {"model", model_name}};
    }

    void send_chunk(json choice_json) {
        json chunk = chunk_base();
        chunk["choices"] = json::array({std::move(choice_json)});
        if (continuous_usage)
            chunk["usage"] = usage_json();
        m_writer->write(sse_event(dump_json(chunk)));
    }

    void stream_output(const SubRequest& sub, int index, Choice& choice, const std::string& delta,
                       const RequestOutput& output) {
        if (m_api == Api::kCompletion) {
            json c = {{"index", index}, {"text", delta}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
            if (want_logprobs) {
                c["logprobs"] = echo_logprobs && !choice.started
                                    ? completion_logprobs_with_prompt(sub, output.logprobs, choice.text_offset)
                                    : completion_logprobs(output.logprobs, choice.text_offset);
            }
            if (choice.finished) {
                c["finish_reason"] = choice.finish_reason;
                c["stop_reason"] = stop_reason_json(choice.stop_reason);
            }
            if (!delta.empty() || choice.finished || !output.logprobs.empty())
                send_chunk(std::move(c));
            return;
        }
        if (!choice.started) {
            send_chunk({{"index", index},
                        {"delta", {{"role", m_server.config().response_role}, {"content", ""}}},
                        {"logprobs", nullptr},
                        {"finish_reason", nullptr}});
        }
        json d = json::object();
        if (choice.parser) {
            StreamDelta parsed = std::move(choice.pending);
            choice.pending = {};
            merge_delta(parsed, choice.parser->push(delta));
            if (choice.finished)
                merge_delta(parsed, choice.parser->finish());
            if (!parsed.content.empty())
                d["content"] = parsed.content;
            if (!parsed.tool_calls.empty()) {
                json calls = json::array();
                for (const ToolCallDelta& t : parsed.tool_calls) {
                    json call = {{"index", t.index}, {"function", {{"arguments", t.arguments}}}};
                    if (t.id)
                        call["id"] = *t.id;
                    if (t.id)
                        call["type"] = "function";
                    if (t.name)
                        call["function"]["name"] = *t.name;
                    calls.push_back(std::move(call));
                }
                d["tool_calls"] = std::move(calls);
            }
        } else if (!delta.empty()) {
            d["content"] = delta;
        }
        if (d.empty() && !choice.finished && output.logprobs.empty())
            return;  // vLLM sends no empty deltas
        json c = {{"index", index}, {"delta", d}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
        if (want_logprobs && !output.logprobs.empty())
            c["logprobs"] = chat_logprobs(output.logprobs);
        if (choice.finished) {
            c["finish_reason"] = final_reason(choice, choice.parser && choice.parser->tools_called());
            c["stop_reason"] = stop_reason_json(choice.stop_reason);
        }
        send_chunk(std::move(c));
    }

    std::string final_reason(const Choice& choice, bool tools_called) const {
        if (tools_called && choice.finish_reason != "length")
            return "tool_calls";
        return choice.finish_reason;
    }

    void fail(const std::string& message) {
        K2_ERROR("request {} failed: {}", id, message);
        for (const SubRequest& sub : m_subs)
            sub.engine->abort(sub.engine_id);
        if (stream) {
            m_writer->write(sse_event(dump_json(error_json(500, message, "InternalServerError"))));
            m_writer->write(kSseDone);
            m_writer->end();
        } else {
            m_writer->send(error_response(ApiError(500, message, "InternalServerError")));
        }
        finish_job();
    }

    void complete() {
        if (stream) {
            if (include_usage) {
                json chunk = chunk_base();
                chunk["choices"] = json::array();
                chunk["usage"] = usage_json();
                m_writer->write(sse_event(dump_json(chunk)));
            }
            m_writer->write(kSseDone);
            m_writer->end();
        } else {
            m_writer->send(json_response(200, m_api == Api::kChat ? chat_response() : completion_response()));
        }
        if (m_server.config().enable_log_requests)
            K2_INFO("Finished request {}.", id);
        finish_job();
    }

    json chat_response() const {
        json choices = json::array();
        for (size_t i = 0; i < m_choices.size(); ++i) {
            const Choice& choice = m_choices[i];
            json message = {{"role", m_server.config().response_role},
                            {"content", nullptr},
                            {"refusal", nullptr},
                            {"annotations", nullptr},
                            {"audio", nullptr},
                            {"function_call", nullptr},
                            {"tool_calls", json::array()},
                            {"reasoning_content", nullptr}};
            bool tools_called = false;
            if (tools_active) {
                const ToolParseResult parsed = parse_kimi_k2_tool_calls(forced_prefix + choice.text);
                tools_called = parsed.tools_called;
                if (parsed.content)
                    message["content"] = *parsed.content;
                for (const ToolCall& call : parsed.tool_calls) {
                    message["tool_calls"].push_back(
                        {{"id", call.id},
                         {"type", "function"},
                         {"function", {{"name", call.name}, {"arguments", call.arguments}}}});
                }
            } else {
                message["content"] = choice.text;
            }
            choices.push_back({{"index", i},
                               {"message", message},
                               {"logprobs", want_logprobs ? chat_logprobs(choice.logprobs) : json(nullptr)},
                               {"finish_reason", final_reason(choice, tools_called)},
                               {"stop_reason", stop_reason_json(choice.stop_reason)}});
        }
        return {{"id", id},
                {"object", "chat.completion"},
                {"created", m_created},
                {"model", model_name},
                {"choices", choices},
                {"service_tier", nullptr},
                {"system_fingerprint", nullptr},
                {"usage", usage_json()},
                {"prompt_logprobs", m_subs.empty() ? json(nullptr) : prompt_logprobs_json(m_subs.front())},
                {"kv_transfer_params", nullptr}};
    }

    json completion_response() const {
        json choices = json::array();
        for (size_t i = 0; i < m_choices.size(); ++i) {
            const Choice& choice = m_choices[i];
            const SubRequest& sub = m_subs.at(i / static_cast<size_t>(n));
            size_t offset = 0;
            json logprobs = nullptr;
            if (want_logprobs) {
                logprobs = echo_logprobs ? completion_logprobs_with_prompt(sub, choice.logprobs, offset)
                                         : completion_logprobs(choice.logprobs, offset);
            }
            choices.push_back({{"index", i},
                               {"text", choice.text},
                               {"logprobs", logprobs},
                               {"finish_reason", choice.finish_reason},
                               {"stop_reason", stop_reason_json(choice.stop_reason)},
                               {"prompt_logprobs", prompt_logprobs_json(sub)}});
        }
        return {{"id", id},
                {"object", "text_completion"},
                {"created", m_created},
                {"model", model_name},
                {"choices", choices},
                {"usage", usage_json()},
                {"system_fingerprint", nullptr},
                {"kv_transfer_params", nullptr}};
    }

    OpenAiServer& m_server;
    std::shared_ptr<const EngineHandle> m_handle;
    std::shared_ptr<ResponseWriter> m_writer;
    Api m_api;
    int64_t m_created;
    std::vector<SubRequest> m_subs;
    std::vector<Choice> m_choices;
    std::atomic<bool> m_drain_scheduled{false};
    bool m_done = false;
};

std::string request_id_for(const HttpRequest& request, const std::string& body_request_id, const char* prefix) {
    std::string header = request.header("x-request-id");
    if (!body_request_id.empty())
        header = body_request_id;
    if (header.empty() || header.size() > 256)
        return std::string(prefix) + random_hex(32);
    return std::string(prefix) + header;
}

// vLLM's X-data-parallel-rank header pins a request to one DP engine (vllm.md §1.3).
int data_parallel_rank_for(const HttpRequest& request, const EngineHandle& handle) {
    const std::string value = request.header("x-data-parallel-rank");
    if (value.empty())
        return -1;
    int rank = -1;
    const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), rank);
    if (ec != std::errc() || end != value.data() + value.size())
        throw ApiError(400, fmt::format("Invalid X-data-parallel-rank header: {}", value));
    const int dp_size = static_cast<int>(handle.all().size());
    if (rank < 0 || rank >= dp_size)
        throw ApiError(400, fmt::format("data_parallel_rank {} is out of range [0, {}).", rank, dp_size));
    return rank;
}

// Unique per engine request even when clients reuse an X-Request-Id (an abort must hit only its own request).
std::string engine_request_id(const std::string& job_id, size_t prompt_idx) {
    return fmt::format("{}-{}-{}", job_id, prompt_idx, random_hex(8));
}

std::string render_chat_prompt(const OpenAiServer& server, const Tokenizer& tokenizer, const ChatRequest& req) {
    json request = json::object();
    if (req.chat_template_kwargs.is_object())
        request = req.chat_template_kwargs;
    request["messages"] = req.messages;
    request["add_generation_prompt"] = req.add_generation_prompt;
    if (req.tools.is_array() && !req.tools.empty())
        request["tools"] = req.tools;
    try {
        const std::string& source = server.config().chat_template;
        return source.empty() ? tokenizer.apply_chat_template_ordered(request)
                              : tokenizer.apply_chat_template(request, source, "--chat-template");
    } catch (const Error& e) {
        throw ApiError(400, fmt::format("Error rendering the chat template: {}", e.message()), "BadRequestError",
                       "messages");
    }
}

}  // namespace

void start_chat_completion(OpenAiServer& server, const HttpRequest& request, const json& body,
                           std::shared_ptr<ResponseWriter> writer) {
    const auto handle = server.engine();
    const OpenAiServerConfig& config = server.config();
    ProtocolLimits limits = config.limits;
    limits.vocab_size = handle->tokenizer->vocab_size();
    const ChatRequest req =
        parse_chat_request(body, config.generation_defaults, limits, config.enable_auto_tool_choice);
    const Tokenizer& tokenizer = *handle->tokenizer;
    auto job = std::make_shared<GenerationJob>(server, handle, std::move(writer), Api::kChat);
    job->id = request_id_for(request, req.request_id, "chatcmpl-");
    job->data_parallel_rank = data_parallel_rank_for(request, *handle);
    job->model_name = config.served_model_names.front();
    job->stream = req.stream;
    job->include_usage = req.include_usage || (req.stream && config.enable_force_include_usage);
    job->continuous_usage = req.continuous_usage_stats;
    job->want_logprobs = req.logprobs;
    job->n = req.params.n;
    job->tools_active = req.tool_choice != ToolChoice::kNone;
    if (req.tool_choice == ToolChoice::kRequired) {
        job->forced_prefix = std::string(kToolSectionBegin);
    } else if (req.tool_choice == ToolChoice::kNamed) {
        job->forced_prefix = fmt::format("{}{}functions.{}:0{}", kToolSectionBegin, kToolCallBegin, req.named_tool,
                                         kToolCallArgumentBegin);
    }
    const std::string prompt = render_chat_prompt(server, tokenizer, req) + job->forced_prefix;
    EngineRequest engine_request;
    engine_request.request_id = engine_request_id(job->id, 0);
    engine_request.prompt_token_ids = tokenizer.encode(prompt, /*allow_special=*/true);
    engine_request.params = req.params;
    if (job->tools_active)
        engine_request.params.skip_special_tokens = false;  // the parser needs the markers
    const int num_prompt = static_cast<int>(engine_request.prompt_token_ids.size());
    engine_request.params.max_tokens = resolve_max_tokens(num_prompt, req.max_tokens, handle->engine->max_model_len(),
                                                          config.generation_defaults.max_new_tokens);
    if (config.enable_log_requests) {
        K2_INFO("Received request {}: prompt tokens: {}, n: {}, max_tokens: {}, temperature: {}, stream: {}", job->id,
                num_prompt, req.params.n, engine_request.params.max_tokens, req.params.temperature, req.stream);
    }
    job->requests.push_back(std::move(engine_request));
    job->start();
}

void start_completion(OpenAiServer& server, const HttpRequest& request, const json& body,
                      std::shared_ptr<ResponseWriter> writer) {
    const auto handle = server.engine();
    const OpenAiServerConfig& config = server.config();
    ProtocolLimits limits = config.limits;
    limits.vocab_size = handle->tokenizer->vocab_size();
    const CompletionRequest req = parse_completion_request(body, config.generation_defaults, limits);
    const Tokenizer& tokenizer = *handle->tokenizer;
    auto job = std::make_shared<GenerationJob>(server, handle, std::move(writer), Api::kCompletion);
    job->id = request_id_for(request, req.request_id, "cmpl-");
    job->data_parallel_rank = data_parallel_rank_for(request, *handle);
    job->model_name = config.served_model_names.front();
    job->stream = req.stream;
    job->include_usage = req.include_usage || (req.stream && config.enable_force_include_usage);
    job->continuous_usage = req.continuous_usage_stats;
    job->want_logprobs = req.logprobs.has_value();
    job->echo_logprobs = req.echo && req.logprobs.has_value();
    job->n = req.params.n;
    for (size_t i = 0; i < req.prompts.size(); ++i) {
        const CompletionPrompt& prompt = req.prompts[i];
        EngineRequest engine_request;
        engine_request.request_id = engine_request_id(job->id, i);
        engine_request.prompt_token_ids =
            prompt.text ? tokenizer.encode(*prompt.text, /*allow_special=*/true) : prompt.token_ids;
        if (engine_request.prompt_token_ids.empty()) {
            throw ApiError(400, "The prompt cannot be empty.", "BadRequestError", "prompt");
        }
        engine_request.params = req.params;
        // vLLM: echo with logprobs asks for the prompt's logprobs too (the same top count).
        if (req.echo && req.logprobs && !engine_request.params.prompt_logprobs)
            engine_request.params.prompt_logprobs = req.logprobs;
        const int num_prompt = static_cast<int>(engine_request.prompt_token_ids.size());
        engine_request.params.max_tokens = resolve_max_tokens(
            num_prompt, req.max_tokens, handle->engine->max_model_len(), config.generation_defaults.max_new_tokens);
        if (req.echo) {
            job->echo_texts.push_back(prompt.text ? *prompt.text
                                                  : tokenizer.decode(prompt.token_ids, /*skip_special_tokens=*/false));
        }
        if (config.enable_log_requests) {
            K2_INFO("Received request {}: prompt tokens: {}, n: {}, max_tokens: {}, temperature: {}, stream: {}",
                    engine_request.request_id, num_prompt, req.params.n, engine_request.params.max_tokens,
                    req.params.temperature, req.stream);
        }
        job->requests.push_back(std::move(engine_request));
    }
    job->start();
}

}  // namespace k2::server

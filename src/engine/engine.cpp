#include "engine/engine.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <unordered_set>

#include "core/log.h"
#include "engine/batch_builder.h"
#include "engine/engine_impl.h"
#include "engine/output_processor.h"
#include "engine/request.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "engine/step_timing.h"
#include "kv/kv_cache_manager.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace k2 {

const char* finish_reason_name(FinishReason reason) {
    switch (reason) {
        case FinishReason::None: return "";
        case FinishReason::Stop: return "stop";
        case FinishReason::Length: return "length";
        case FinishReason::Abort: return "abort";
        case FinishReason::Error: return "error";
    }
    return "";
}

namespace {

constexpr auto kStuckStepLimit = std::chrono::seconds(60);

double seconds_between(Clock::time_point from, Clock::time_point to) {
    return std::chrono::duration<double>(to - from).count();
}

class DetokenizerStream final : public TextStream {
public:
    DetokenizerStream(const Tokenizer& tokenizer, bool skip_special_tokens)
        : m_detokenizer(tokenizer, skip_special_tokens) {}
    std::string push(int32_t token_id) override { return m_detokenizer.push(token_id); }
    std::string flush() override { return m_detokenizer.flush(); }

private:
    IncrementalDetokenizer m_detokenizer;
};

int resolve_max_model_len(const EngineConfig& config, const ModelConfig& model_config) {
    const auto from_model = static_cast<int>(std::min<int64_t>(model_config.max_position_embeddings, 1 << 30));
    if (config.max_model_len <= 0) {
        K2_CHECK(from_model > 0, "max_model_len is 0 and config.json has no max_position_embeddings");
        return from_model;
    }
    K2_CHECK(from_model <= 0 || config.max_model_len <= from_model,
             "max_model_len {} is larger than the model's max_position_embeddings {}", config.max_model_len,
             from_model);
    return config.max_model_len;
}

int resolve_num_blocks(const EngineConfig& config, const Model& model) {
    if (config.num_kv_blocks > 0) return config.num_kv_blocks;
    const size_t bytes_per_block = model.kv_cache_bytes_per_block();
    K2_CHECK(bytes_per_block > 0, "the model reports 0 KV bytes per block");
    const size_t num_blocks = config.kv_cache_memory_bytes / bytes_per_block;
    K2_CHECK(num_blocks > 0, "kv_cache_memory_bytes {} is smaller than one KV block ({} bytes)",
             config.kv_cache_memory_bytes, bytes_per_block);
    return static_cast<int>(std::min<size_t>(num_blocks, 1 << 24));
}

EngineStats make_empty_stats(int max_model_len) {
    EngineStats stats;
    stats.time_to_first_token_seconds = Histogram(ttft_buckets());
    stats.inter_token_latency_seconds = Histogram(inter_token_buckets());
    stats.time_per_output_token_seconds = Histogram(inter_token_buckets());
    stats.e2e_request_latency_seconds = Histogram(request_latency_buckets());
    stats.request_queue_time_seconds = Histogram(request_latency_buckets());
    stats.request_inference_time_seconds = Histogram(request_latency_buckets());
    stats.request_prefill_time_seconds = Histogram(request_latency_buckets());
    stats.request_decode_time_seconds = Histogram(request_latency_buckets());
    stats.request_params_n = Histogram(one_two_five_buckets(max_model_len));
    stats.request_params_max_tokens = Histogram(one_two_five_buckets(max_model_len));
    stats.request_prompt_tokens = Histogram(one_two_five_buckets(max_model_len));
    stats.request_generation_tokens = Histogram(one_two_five_buckets(max_model_len));
    stats.iteration_tokens = Histogram(iteration_tokens_buckets());
    stats.last_step_time = Clock::now();
    return stats;
}

}  // namespace

Engine::Impl::Impl(EngineConfig engine_config, std::unique_ptr<Model> engine_model,
                   std::shared_ptr<const Tokenizer> engine_tokenizer)
    : config(std::move(engine_config)),
      model(std::move(engine_model)),
      tokenizer(std::move(engine_tokenizer)),
      max_model_len(resolve_max_model_len(config, model->config())),
      vocab_size(static_cast<int>(model->config().vocab_size)),
      kv(resolve_num_blocks(config, *model), kKvBlockSize, config.enable_prefix_caching),
      scheduler_init(fit_max_model_len()),
      scheduler(SchedulerConfig{config.max_num_seqs, config.max_num_batched_tokens, max_model_len,
                                parse_scheduling_policy(config.scheduling_policy)},
                kv),
      engine_rng(config.seed),
      stats(make_empty_stats(max_model_len)),
      timing(config.async_scheduling) {
    K2_CHECK(config.max_waiting > 0, "max_waiting must be positive, got {}", config.max_waiting);
    K2_CHECK(config.max_logprobs >= 0, "max_logprobs must be non-negative, got {}", config.max_logprobs);
    if (tokenizer != nullptr) eos_ids = tokenizer->stop_token_ids();
    if (eos_ids.empty()) {
        for (const int64_t id : model->config().eos_token_ids) eos_ids.push_back(static_cast<int32_t>(id));
    }
    model->allocate_kv_cache(kv.num_blocks());
    K2_INFO("engine: {} KV blocks of {} tokens, max_model_len {}, max_num_seqs {}, max_num_batched_tokens {}{}",
            kv.num_blocks(), kKvBlockSize, max_model_len, config.max_num_seqs, config.max_num_batched_tokens,
            config.async_scheduling ? ", async scheduling" : "");
    refresh_gauges();
}

void Engine::Impl::validate(const EngineRequest& request) const {
    const SamplingParams& p = request.params;
    const int num_prompt = static_cast<int>(request.prompt_token_ids.size());
    K2_CHECK(num_prompt > 0, "The prompt must contain at least one token.");
    for (const int32_t id : request.prompt_token_ids) {
        K2_CHECK(id >= 0 && id < vocab_size, "Token id {} is out of vocabulary (vocab_size {}).", id, vocab_size);
    }
    K2_CHECK(num_prompt < max_model_len,
             "This model's maximum context length is {} tokens. However, your request has {} input tokens. "
             "Please reduce the length of the input messages.",
             max_model_len, num_prompt);
    K2_CHECK(p.max_tokens <= 0 || num_prompt + p.max_tokens <= max_model_len,
             "'max_tokens' or 'max_completion_tokens' is too large: {}. This model's maximum context length is {} "
             "tokens and your request has {} input tokens ({} > {} - {}).",
             p.max_tokens, max_model_len, num_prompt, p.max_tokens, max_model_len, num_prompt);
    K2_CHECK(p.n >= 1, "n must be at least 1, got {}.", p.n);
    K2_CHECK(p.presence_penalty >= -2.0 && p.presence_penalty <= 2.0,
             "presence_penalty must be in [-2, 2], got {}.", p.presence_penalty);
    K2_CHECK(p.frequency_penalty >= -2.0 && p.frequency_penalty <= 2.0,
             "frequency_penalty must be in [-2, 2], got {}.", p.frequency_penalty);
    K2_CHECK(p.repetition_penalty > 0.0, "repetition_penalty must be greater than zero, got {}.",
             p.repetition_penalty);
    K2_CHECK(p.temperature >= 0.0, "temperature must be non-negative, got {}.", p.temperature);
    K2_CHECK(p.top_p > 0.0 && p.top_p <= 1.0, "top_p must be in (0, 1], got {}.", p.top_p);
    K2_CHECK(p.top_k >= -1, "top_k must be 0 (disable), or at least 1, got {}.", p.top_k);
    K2_CHECK(p.min_p >= 0.0 && p.min_p <= 1.0, "min_p must be in [0, 1], got {}.", p.min_p);
    K2_CHECK(p.min_tokens >= 0, "min_tokens must be greater than or equal to 0, got {}.", p.min_tokens);
    K2_CHECK(p.max_tokens <= 0 || p.min_tokens <= p.max_tokens,
             "min_tokens must be less than or equal to max_tokens={}, got {}.", p.max_tokens, p.min_tokens);
    if (p.logprobs.has_value()) {
        K2_CHECK(*p.logprobs >= 0, "logprobs must be non-negative, got {}.", *p.logprobs);
        K2_CHECK(*p.logprobs <= config.max_logprobs,
                 "Requested sample logprobs of {}, which is greater than max allowed: {}", *p.logprobs,
                 config.max_logprobs);
    }
    if (p.prompt_logprobs.has_value()) {
        K2_CHECK(*p.prompt_logprobs >= 0, "prompt_logprobs must be non-negative, got {}.", *p.prompt_logprobs);
        K2_CHECK(*p.prompt_logprobs <= config.max_logprobs,
                 "Requested prompt logprobs of {}, which is greater than max allowed: {}", *p.prompt_logprobs,
                 config.max_logprobs);
    }
    for (const auto& [id, bias] : p.logit_bias) {
        K2_CHECK(id >= 0 && id < vocab_size,
                 "token_id(s) [{}] in logit_bias contain out-of-vocab token ids. Vocabulary size: {}", id, vocab_size);
        K2_CHECK(std::isfinite(bias), "logit_bias for token {} must be finite, got {}.", id, bias);
    }
    for (const std::string& stop : p.stop) K2_CHECK(!stop.empty(), "stop strings must not be empty.");
    K2_CHECK(p.stop.empty() || tokenizer != nullptr, "stop strings need a tokenizer, and this engine has none.");
}

// A single sequence must fit in the cache, or it could never run (vLLM refuses to start then). An explicit
// max_model_len that does not fit is an error; the one from config.json is lowered to what fits.
bool Engine::Impl::fit_max_model_len() {
    const int capacity = kv.num_blocks() * kKvBlockSize;
    if (max_model_len <= capacity) return true;
    K2_CHECK(config.max_model_len <= 0,
             "The model's max seq len ({}) is larger than the maximum number of tokens that can be stored in KV "
             "cache ({}). Try increasing the KV cache size (kv_cache_memory_bytes / num_kv_blocks) or decreasing "
             "max_model_len.",
             max_model_len, capacity);
    K2_WARN("engine: max_model_len lowered from {} to {}, the KV cache capacity", max_model_len, capacity);
    max_model_len = capacity;
    return true;
}

std::unique_ptr<TextStream> Engine::Impl::make_text_stream(const SamplingParams& params) const {
    if (tokenizer != nullptr) return std::make_unique<DetokenizerStream>(*tokenizer, params.skip_special_tokens);
    return nullptr;
}

// Called with inbox_mutex held (engine_rng, next_seq_id).
std::vector<std::unique_ptr<Request>> Engine::Impl::make_requests(EngineRequest request,
                                                                  std::shared_ptr<RequestStream> stream) {
    const int num_prompt = static_cast<int>(request.prompt_token_ids.size());
    const int limit = max_model_len - num_prompt;
    const int max_tokens = request.params.max_tokens > 0 ? std::min(request.params.max_tokens, limit) : limit;
    const auto now = Clock::now();
    std::vector<std::unique_ptr<Request>> requests;
    for (int index = 0; index < request.params.n; ++index) {
        auto seq = std::make_unique<Request>();
        seq->request_id = request.request_id;
        seq->index = index;
        seq->seq_id = next_seq_id++;
        seq->arrival_order = seq->seq_id;
        seq->priority = request.priority;
        seq->params = request.params;
        seq->max_tokens = max_tokens;
        seq->token_ids = request.prompt_token_ids;
        seq->num_prompt_tokens = num_prompt;
        // NOTE: the n children of a seeded request use seed + index (vLLM's ParentRequest), so they differ.
        const uint64_t seed = request.params.seed.has_value()
                                  ? static_cast<uint64_t>(*request.params.seed) + static_cast<uint64_t>(index)
                                  : engine_rng();
        seq->rng.seed(seed);
        seq->stream = stream;
        seq->output = std::make_unique<OutputProcessor>(make_text_stream(request.params), request.params.stop,
                                                        request.params.include_stop_str_in_output);
        seq->arrival_time = now;
        requests.push_back(std::move(seq));
    }
    return requests;
}

void Engine::Impl::drain_inbox() {
    std::vector<std::unique_ptr<Request>> requests;
    std::vector<std::string> aborts;
    {
        const std::lock_guard lock(inbox_mutex);
        requests.swap(inbox_requests);
        aborts.swap(inbox_aborts);
    }
    for (auto& request : requests) scheduler.add(std::move(request));
    for (const std::string& request_id : aborts) {
        for (Request* request : scheduler.find(request_id)) {
            RequestOutput output;
            finish(request, FinishReason::Abort, std::move(output));
        }
    }
    if (!requests.empty() || !aborts.empty()) refresh_gauges();
}

void Engine::Impl::refresh_gauges() {
    {
        const std::lock_guard lock(inbox_mutex);
        num_waiting = scheduler.num_waiting() + static_cast<int>(inbox_requests.size());
    }
    // A step still in flight (or blocks still held for one) is unfinished work too.
    num_unfinished.store(scheduler.num_running() + scheduler.num_waiting() + (async_pending() ? 1 : 0));
    const std::lock_guard lock(stats_mutex);
    stats.num_running = scheduler.num_running();
    stats.num_waiting = scheduler.num_waiting();
    stats.num_free_blocks = kv.num_free_blocks();
    stats.num_total_blocks = kv.num_blocks();
    stats.kv_usage = kv.usage();
}

void Engine::Impl::record_token_timing(Request& request, bool first_token) {
    const auto now = Clock::now();
    {
        const std::lock_guard lock(stats_mutex);
        stats.generation_tokens += 1;
        if (first_token) {
            stats.prompt_tokens += static_cast<uint64_t>(request.num_prompt_tokens);
            stats.time_to_first_token_seconds.observe(seconds_between(request.arrival_time, now));
        } else {
            stats.inter_token_latency_seconds.observe(seconds_between(request.last_token_time, now));
        }
    }
    if (first_token) request.first_token_time = now;
    request.last_token_time = now;
}

// vLLM's check_stop: length first, then (past min_tokens) EOS unless ignore_eos, then stop_token_ids.
FinishReason Engine::Impl::check_token_stop(const Request& request, int32_t token_id, RequestOutput& output) const {
    if (request.num_tokens() >= max_model_len || request.num_output_tokens() >= request.max_tokens) {
        return FinishReason::Length;
    }
    if (request.num_output_tokens() < request.params.min_tokens) return FinishReason::None;
    if (!request.params.ignore_eos && std::find(eos_ids.begin(), eos_ids.end(), token_id) != eos_ids.end()) {
        return FinishReason::Stop;
    }
    const auto& stop_ids = request.params.stop_token_ids;
    if (std::find(stop_ids.begin(), stop_ids.end(), token_id) != stop_ids.end()) {
        output.stop_reason = token_id;
        return FinishReason::Stop;
    }
    return FinishReason::None;
}

// Ends a sequence: frees its blocks, sends the last output (with any held-back text) and records stats.
void Engine::Impl::finish(Request* request, FinishReason reason, RequestOutput output) {
    std::unique_ptr<Request> owned = scheduler.finish(request, reason, !config.async_scheduling);
    output.text_delta += owned->output->finish();  // held-back text; empty after a stop string
    output.request_id = owned->request_id;
    output.index = owned->index;
    output.finished = true;
    output.finish_reason = finish_reason_name(reason);
    output.num_prompt_tokens = owned->num_prompt_tokens;
    output.num_output_tokens = owned->num_output_tokens();
    output.num_cached_tokens = std::max(owned->num_cached_tokens, 0);
    const auto now = Clock::now();
    {
        const std::lock_guard lock(stats_mutex);
        stats.requests_finished_by_reason[output.finish_reason] += 1;
        stats.e2e_request_latency_seconds.observe(seconds_between(owned->arrival_time, now));
        if (owned->num_cached_tokens >= 0) {  // it was scheduled
            stats.request_queue_time_seconds.observe(seconds_between(owned->arrival_time, owned->scheduled_time));
            stats.request_inference_time_seconds.observe(seconds_between(owned->scheduled_time, now));
        }
        if (owned->num_output_tokens() > 0) {
            stats.request_prefill_time_seconds.observe(seconds_between(owned->scheduled_time, owned->first_token_time));
            stats.request_decode_time_seconds.observe(seconds_between(owned->first_token_time, now));
        }
        if (owned->index == 0) {
            stats.request_params_n.observe(owned->params.n);
            stats.request_params_max_tokens.observe(owned->max_tokens);
        }
        stats.request_prompt_tokens.observe(owned->num_prompt_tokens);
        stats.request_generation_tokens.observe(owned->num_output_tokens());
        if (owned->num_output_tokens() > 1) {
            stats.time_per_output_token_seconds.observe(seconds_between(owned->first_token_time, now) /
                                                        (owned->num_output_tokens() - 1));
        }
    }
    owned->stream->push(std::move(output));
    if (config.async_scheduling) retired.push_back({std::move(owned), last_built_step});
}

void Engine::Impl::fail_step(const SchedulerOutput& output, const std::string& message) {
    for (const ScheduledSeq& seq : output.seqs) {
        if (seq.request->is_finished()) continue;  // --async-scheduling: ended while the step ran
        RequestOutput failed;
        failed.error = message;
        finish(seq.request, FinishReason::Error, std::move(failed));
    }
}

void Engine::Impl::abort_all() {
    drain_inbox();
    settle_async();
    std::vector<Request*> all(scheduler.running().begin(), scheduler.running().end());
    all.insert(all.end(), scheduler.waiting().begin(), scheduler.waiting().end());
    for (Request* request : all) finish(request, FinishReason::Abort, RequestOutput{});
    release_retired();
    timing.log_total();
    refresh_gauges();
}

void Engine::Impl::loop() {
    while (true) {
        drain_inbox();
        const bool stopping = stop_requested.load();
        if (stopping && (!drain_on_stop.load() || (!scheduler.has_unfinished() && !async_pending()))) break;
        if (!scheduler.has_unfinished() && !async_pending()) {
            std::unique_lock lock(inbox_mutex);
            inbox_cv.wait_for(lock, std::chrono::milliseconds(100), [&] {
                return !inbox_requests.empty() || !inbox_aborts.empty() || stop_requested.load();
            });
            continue;
        }
        try {
            run_step();
        } catch (const std::exception& error) {
            // NOTE: a bug in the step (not the model) must not kill the loop silently: fail what runs.
            K2_ERROR("engine: step failed: {}", error.what());
            step_started_ns.store(0);
            settle_async();
            std::vector<Request*> running(scheduler.running().begin(), scheduler.running().end());
            for (Request* request : running) {
                RequestOutput failed;
                failed.error = error.what();
                finish(request, FinishReason::Error, std::move(failed));
            }
        }
    }
    abort_all();
}

Engine::Engine(EngineConfig config, std::unique_ptr<Model> model, std::shared_ptr<const Tokenizer> tokenizer) {
    K2_CHECK(model != nullptr, "Engine needs a model");
    m_impl = std::make_unique<Impl>(std::move(config), std::move(model), std::move(tokenizer));
}

Engine::~Engine() { stop(false); }

void Engine::start() {
    K2_CHECK(!m_impl->thread.joinable(), "the engine loop is already running");
    m_impl->loop_alive.store(true);
    m_impl->thread = std::thread([impl = m_impl.get()] {
        impl->loop();
        impl->loop_alive.store(false);
    });
}

void Engine::stop(bool drain) { stop(drain, std::chrono::steady_clock::time_point::max()); }

void Engine::stop(bool drain, std::chrono::steady_clock::time_point drain_deadline) {
    {
        const std::lock_guard lock(m_impl->inbox_mutex);
        m_impl->accepting = false;
        m_impl->drain_on_stop.store(drain);
        m_impl->stop_requested.store(true);
    }
    m_impl->inbox_cv.notify_all();
    if (m_impl->thread.joinable()) {
        while (drain && m_impl->loop_alive.load() && std::chrono::steady_clock::now() < drain_deadline) {
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        // Past the deadline the loop leaves at its next iteration and aborts what is still unfinished.
        m_impl->drain_on_stop.store(false);
        m_impl->inbox_cv.notify_all();
        m_impl->thread.join();
    } else if (drain) {
        while (m_impl->scheduler.has_unfinished() || m_impl->async_pending() || step()) step();
    } else {
        m_impl->abort_all();
    }
}

std::shared_ptr<RequestStream> Engine::submit(EngineRequest request) {
    m_impl->validate(request);
    auto stream = std::make_shared<RequestStream>();
    stream->num_sequences = request.params.n;
    {
        const std::lock_guard lock(m_impl->inbox_mutex);
        if (!m_impl->accepting) throw EngineOverloadedError("The engine is shutting down.");
        if (m_impl->num_waiting + request.params.n > m_impl->config.max_waiting) {
            throw EngineOverloadedError(fmt::format(
                "The server is overloaded: {} requests are waiting (max_waiting {}).", m_impl->num_waiting,
                m_impl->config.max_waiting));
        }
        auto requests = m_impl->make_requests(std::move(request), stream);
        m_impl->num_waiting += static_cast<int>(requests.size());
        for (auto& seq : requests) m_impl->inbox_requests.push_back(std::move(seq));
    }
    m_impl->inbox_cv.notify_all();
    return stream;
}

void Engine::abort(const std::string& request_id) {
    {
        const std::lock_guard lock(m_impl->inbox_mutex);
        m_impl->inbox_aborts.push_back(request_id);
    }
    m_impl->inbox_cv.notify_all();
}

EngineStats Engine::stats() const {
    const std::lock_guard lock(m_impl->stats_mutex);
    return m_impl->stats;
}

bool Engine::healthy() const {
    if (!m_impl->loop_alive.load()) return false;
    const int64_t started = m_impl->step_started_ns.load();
    if (started == 0) return true;
    const auto elapsed = Clock::now() - Clock::time_point(Clock::duration(started));
    return elapsed < kStuckStepLimit;
}

const ModelConfig& Engine::model_config() const { return m_impl->model->config(); }

int Engine::max_model_len() const { return m_impl->max_model_len; }

const EngineConfig& Engine::config() const { return m_impl->config; }

bool Engine::step() {
    K2_CHECK(!m_impl->thread.joinable(), "Engine::step is for engines without a loop thread");
    m_impl->drain_inbox();
    if (!m_impl->scheduler.has_unfinished() && !m_impl->async_pending()) return false;
    m_impl->run_step();
    return true;
}

bool Engine::has_unfinished_requests() const {
    const std::lock_guard lock(m_impl->inbox_mutex);
    return !m_impl->inbox_requests.empty() || !m_impl->inbox_aborts.empty() || m_impl->num_unfinished.load() > 0;
}

}  // namespace k2

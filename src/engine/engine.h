// Engine: the step loop (schedule -> build batch -> Model::forward -> sample -> stop checks -> outputs; with
// --async-scheduling pipelined around Model::submit/collect) on its own thread, behind a thread-safe
// submit/abort API. vLLM v1 semantics (reference/vllm.md §6).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/engine_api.h"
#include "io/model_config.h"
#include "model/model.h"

namespace k2 {

class Tokenizer;

struct EngineConfig {
    int max_num_seqs = 256;
    int max_num_batched_tokens = 8192;
    int max_model_len = 0;  // 0: from config (max_position_embeddings)
    int num_kv_blocks = 0;  // 0: from kv_cache_memory_bytes (like vLLM's --num-gpu-blocks-override)
    size_t kv_cache_memory_bytes = 1ull << 30;
    bool enable_prefix_caching = true;
    std::string scheduling_policy = "fcfs";  // "fcfs" or "priority"
    int max_waiting = 4096;                  // submit beyond this throws EngineOverloadedError (HTTP 503)
    int max_logprobs = 20;
    uint64_t seed = 0;  // engine RNG for requests without a seed
    // --async-scheduling (vLLM's flag): step k+1 is scheduled and built while the model runs step k, and step k's
    // outputs are processed while it runs step k+1. Same tokens as without it; a sequence that ends at step k
    // still computes one dropped row in step k+1.
    bool async_scheduling = false;
};

// Thrown by Engine::submit when the waiting queue is full; the server answers 503.
// Every other k2::Error from submit is a validation error (HTTP 400).
class EngineOverloadedError : public Error {
public:
    using Error::Error;
};

// A Prometheus-style histogram. counts[i] is cumulative: observations <= bounds[i] (the `le` buckets);
// the +Inf bucket is `count`.
struct Histogram {
    std::vector<double> bounds;
    std::vector<uint64_t> counts;
    double sum = 0.0;
    uint64_t count = 0;

    Histogram() = default;
    explicit Histogram(std::vector<double> upper_bounds);
    void observe(double value);
};

// vLLM's bucket boundaries (vllm/v1/metrics/loggers.py).
std::vector<double> ttft_buckets();               // 0.001 ... 2560 s
std::vector<double> inter_token_buckets();        // 0.01 ... 80 s
std::vector<double> request_latency_buckets();    // 0.3 ... 7680 s
std::vector<double> iteration_tokens_buckets();   // 1 ... 16384
std::vector<double> one_two_five_buckets(int max_value);  // 1, 2, 5, 10, 20, 50, ... <= max_value

struct EngineStats {
    // Gauges.
    int num_running = 0;
    int num_waiting = 0;
    double kv_usage = 0.0;  // 0..1 (used blocks / total blocks)
    int num_free_blocks = 0;
    int num_total_blocks = 0;
    // Counters.
    uint64_t prompt_tokens = 0;      // prompt tokens of requests that produced their first token (vLLM)
    uint64_t generation_tokens = 0;  // sampled tokens
    uint64_t computed_tokens = 0;    // tokens run through the model (prefix-cache hits excluded)
    uint64_t preemptions = 0;
    uint64_t prefix_cache_queries = 0;  // tokens looked up in the prefix cache
    uint64_t prefix_cache_hits = 0;     // tokens found there
    uint64_t num_steps = 0;
    std::map<std::string, uint64_t> requests_finished_by_reason;  // "stop", "length", "abort", "error"
    // Histograms.
    Histogram time_to_first_token_seconds;
    Histogram inter_token_latency_seconds;
    Histogram time_per_output_token_seconds;  // per request: (e2e - ttft) / (output tokens - 1)
    Histogram e2e_request_latency_seconds;
    Histogram request_queue_time_seconds;
    Histogram request_inference_time_seconds;  // first scheduled -> finished
    Histogram request_prefill_time_seconds;    // first scheduled -> first token
    Histogram request_decode_time_seconds;     // first token -> finished
    Histogram request_params_n;                // per request (observed when its sequence 0 finishes)
    Histogram request_params_max_tokens;       // effective max_tokens, per request
    Histogram request_prompt_tokens;
    Histogram request_generation_tokens;
    Histogram iteration_tokens;
    std::chrono::steady_clock::time_point last_step_time;
};

class Engine {
public:
    Engine(EngineConfig config, std::unique_ptr<Model> model, std::shared_ptr<const Tokenizer> tokenizer);
    ~Engine();  // stops the loop (without draining)
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    void start();            // starts the step-loop thread
    void stop(bool drain);   // drain: finish running+waiting requests first; otherwise abort them
    // Drains until drain_deadline, then aborts what is left (finish_reason "abort"): SIGTERM with
    // --shutdown-timeout must end even when requests would run for minutes.
    void stop(bool drain, std::chrono::steady_clock::time_point drain_deadline);
    // Validates (k2::Error with vLLM's message for a too-long prompt, too many logprobs, ...; an
    // EngineOverloadedError when the waiting queue is full or the engine stopped) and queues the request;
    // outputs (text deltas via IncrementalDetokenizer, stop strings handled) arrive on the returned stream.
    // Thread-safe.
    // max_tokens: params.max_tokens <= 0 means "not given" (chat without max_tokens): generate until
    // EOS/stop or the context is full (L - P tokens). A value with P + max_tokens > L throws vLLM's
    // "'max_tokens' or 'max_completion_tokens' is too large: ..." error (vllm.md §2.5).
    // Outputs: one RequestOutput per sequence per step that produced a token, the last with finished=true.
    // prompt_logprobs (first output only) has num_prompt_tokens - 1 entries: entry i is for prompt token
    // i + 1 (vLLM's leading None for the first prompt token is left to the caller).
    // A prompt must have at least one token; token ids must be < vocab_size.
    std::shared_ptr<RequestStream> submit(EngineRequest request);
    void abort(const std::string& request_id);  // thread-safe, idempotent; frees its KV blocks
    EngineStats stats() const;                  // thread-safe snapshot
    bool healthy() const;                       // loop thread alive and not stuck in one step > 60 s
    const ModelConfig& model_config() const;
    int max_model_len() const;
    const EngineConfig& config() const;

    // Runs one step on the caller's thread (tests, benchmarks; only when start() was not called).
    // Returns false when there was nothing to do.
    bool step();
    bool has_unfinished_requests() const;  // thread-safe: queued or running sequences remain

private:
    struct Impl;
    std::unique_ptr<Impl> m_impl;
};

}  // namespace k2

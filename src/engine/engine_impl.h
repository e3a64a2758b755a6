// Engine::Impl: the engine's state and its step loop, shared by engine.cpp (requests, lifecycle, finishing) and
// engine_step.cpp (one step: schedule, forward, sample, outputs; synchronous or --async-scheduling). Internal to
// src/engine.
#pragma once

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
#include "engine/engine.h"
#include "engine/output_processor.h"
#include "engine/request.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "engine/step_timing.h"
#include "kv/kv_cache_manager.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace k2 {

struct Engine::Impl {
    Impl(EngineConfig engine_config, std::unique_ptr<Model> engine_model,
         std::shared_ptr<const Tokenizer> engine_tokenizer);

    void validate(const EngineRequest& request) const;
    std::vector<std::unique_ptr<Request>> make_requests(EngineRequest request, std::shared_ptr<RequestStream> stream);
    std::unique_ptr<TextStream> make_text_stream(const SamplingParams& params) const;
    void drain_inbox();
    bool run_step() { return config.async_scheduling ? run_async_step() : run_sync_step(); }
    bool run_sync_step();
    // --async-scheduling: schedule + build step k+1 -> collect step k -> sample it -> patch k+1's placeholders ->
    // submit k+1 -> outputs of step k (detokenize, stop strings, streaming) while k+1 runs.
    bool run_async_step();
    // The per-sequence logits work of a step (prompt logprobs, sampling) is pure and runs for all sequences in
    // parallel (a 163,840-wide softmax per row was the step's largest host cost); the bookkeeping after it does not.
    struct SeqSample {
        std::vector<TokenLogprobs> prompt_logprobs;
        std::optional<SampleResult> sampled;
    };
    // device_tokens: [num_logits] the model's device-sampled tokens (Model::sampled_tokens), -1 for host rows; or
    // empty.
    SeqSample sample_seq(const ScheduledSeq& seq, const SeqLogitRows& rows, const Tensor& logits,
                         std::span<const int32_t> device_tokens) const;
    // For a model that samples on its device: each sampled row's mode, and for temperature draws the uniform, drawn
    // now from the request's generator (the one draw the host sampler would make for the row).
    void plan_device_sampling(const SchedulerOutput& output, BuiltBatch& built);
    // Samples every sequence of the step that has not finished meanwhile (their rows are dropped, and their
    // generators stay untouched).
    std::vector<SeqSample> sample_all(const SchedulerOutput& output, const BuiltBatch& built, const Tensor& logits);
    void check_logits(const Tensor& logits, const BuiltBatch& built) const;
    void record_step_stats(const SchedulerOutput& output);
    // A sequence's step result in two parts: commit appends the token (what the next step's input needs), emit
    // does the output work (stop checks, detokenizing, streaming) that may overlap the next step.
    void commit_seq(const ScheduledSeq& seq, SeqSample& sample);
    void emit_seq(Request& request, const SeqSample& sample);
    bool async_pending() const { return in_flight.has_value() || !retired.empty(); }
    void release_retired();
    void settle_async();  // waits for a step in flight and drops it (errors, shutdown)
    void record_token_timing(Request& request, bool first_token);
    FinishReason check_token_stop(const Request& request, int32_t token_id, RequestOutput& output) const;
    void finish(Request* request, FinishReason reason, RequestOutput output);
    void fail_step(const SchedulerOutput& output, const std::string& message);
    void abort_all();
    void loop();
    void refresh_gauges();
    bool fit_max_model_len();

    EngineConfig config;
    std::unique_ptr<Model> model;
    std::shared_ptr<const Tokenizer> tokenizer;
    int max_model_len = 0;
    int vocab_size = 0;
    std::vector<int32_t> eos_ids;
    KvCacheManager kv;
    bool scheduler_init;  // (sequencing only: max_model_len is fitted to the cache before the scheduler exists)
    Scheduler scheduler;

    // Inbox: written by any thread, drained by the step thread.
    mutable std::mutex inbox_mutex;
    std::condition_variable inbox_cv;
    std::vector<std::unique_ptr<Request>> inbox_requests;
    std::vector<std::string> inbox_aborts;
    std::mt19937_64 engine_rng;
    uint64_t next_seq_id = 1;
    int num_waiting = 0;  // scheduler waiting + inbox, for the max_waiting bound (under inbox_mutex)
    bool accepting = true;

    mutable std::mutex stats_mutex;
    EngineStats stats;

    // --async-scheduling (step thread). Steps are numbered as they are built.
    struct StepInFlight {
        SchedulerOutput output;
        BuiltBatch built;
        uint64_t id = 0;
    };
    std::optional<StepInFlight> in_flight;  // submitted, not collected
    uint64_t last_built_step = 0;
    uint64_t last_collected_step = 0;
    // A finished sequence stays alive, its KV blocks allocated, until every step built before it finished (the
    // ones that may still hold its row and write its blocks) is collected.
    struct RetiredSeq {
        std::unique_ptr<Request> request;
        uint64_t last_step = 0;
    };
    std::vector<RetiredSeq> retired;
    StepTiming timing;

    std::thread thread;
    std::atomic<bool> stop_requested{false};
    std::atomic<bool> drain_on_stop{false};
    std::atomic<bool> loop_alive{false};
    std::atomic<int64_t> step_started_ns{0};  // steady clock; 0 while idle
    std::atomic<int> num_unfinished{0};       // sequences in the scheduler, for other threads
};

}  // namespace k2

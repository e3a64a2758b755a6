// Request: one sequence's state inside the engine (a request with n > 1 becomes n sequences sharing the
// prompt). Owned by the Scheduler and touched only on the step thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/engine_api.h"
#include "engine/output_processor.h"
#include "engine/sampling_params.h"

namespace k2 {

enum class RequestStatus : uint8_t { Waiting, Running, Preempted, Finished };

enum class FinishReason : uint8_t { None, Stop, Length, Abort, Error };

const char* finish_reason_name(FinishReason reason);  // "stop", "length", "abort", "error" ("" for None)

using Clock = std::chrono::steady_clock;

struct Request {
    std::string request_id;  // the client's id, shared by the n sequences
    int index = 0;           // choice index among the n sequences
    uint64_t seq_id = 0;     // unique per sequence; keys the KV cache manager
    uint64_t arrival_order = 0;
    int priority = 0;
    SamplingParams params;
    int max_tokens = 0;  // effective: min(params.max_tokens, max_model_len - num_prompt_tokens)

    std::vector<int32_t> token_ids;  // prompt followed by the output tokens
    int num_prompt_tokens = 0;
    int num_computed_tokens = 0;  // tokens whose KV is in the cache (with --async-scheduling: or being computed)
    // --async-scheduling: tokens that steps already scheduled will sample but that are not in token_ids yet; the
    // next step's input row for them holds a placeholder id until the token is sampled (at most 2: the step in
    // flight and the one being built).
    int num_output_placeholders = 0;
    int num_cached_tokens = -1;   // prompt tokens served by the prefix cache at first admission (-1: not yet)
    int num_preemptions = 0;
    RequestStatus status = RequestStatus::Waiting;
    FinishReason finish_reason = FinishReason::None;

    std::mt19937_64 rng;  // seeded from params.seed, else from the engine RNG
    std::vector<TokenLogprobs> prompt_logprobs;  // for prompt tokens 1.., filled while the prompt computes
    std::shared_ptr<RequestStream> stream;
    std::unique_ptr<OutputProcessor> output;

    Clock::time_point arrival_time;
    Clock::time_point scheduled_time;  // first admission (queue time ends)
    Clock::time_point first_token_time;
    Clock::time_point last_token_time;

    int num_tokens() const { return static_cast<int>(token_ids.size()); }
    int num_tokens_with_placeholders() const { return num_tokens() + num_output_placeholders; }
    int num_output_tokens() const { return num_tokens() - num_prompt_tokens; }
    bool is_finished() const { return status == RequestStatus::Finished; }
    bool wants_prompt_logprobs() const { return params.prompt_logprobs.has_value(); }
    bool prompt_logprobs_done() const {
        return !wants_prompt_logprobs() || static_cast<int>(prompt_logprobs.size()) >= num_prompt_tokens - 1;
    }
};

}  // namespace k2

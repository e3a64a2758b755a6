// The types the server exchanges with the Engine. The server never sees the scheduler, KV cache or model.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "engine/sampling_params.h"

namespace k2 {

struct EngineRequest {
    std::string request_id;
    std::vector<int32_t> prompt_token_ids;
    SamplingParams params;
    int priority = 0;  // lower runs first under --scheduling-policy priority
};

struct TopLogprob {
    int32_t token_id = 0;
    float logprob = 0.0f;
};

struct TokenLogprobs {
    int32_t token_id = 0;             // the sampled (or prompt) token
    float logprob = 0.0f;
    int rank = 0;                     // 1-based rank of token_id in the whole vocabulary (vLLM's rank)
    std::vector<TopLogprob> top;      // highest first, size = requested top count
};

// One delta of one sequence (choice `index` of a request with n > 1).
struct RequestOutput {
    std::string request_id;
    int index = 0;
    std::vector<int32_t> new_token_ids;
    std::string text_delta;                      // detokenized, never ends inside a UTF-8 character
    std::vector<TokenLogprobs> logprobs;         // one per new token when requested
    std::vector<TokenLogprobs> prompt_logprobs;  // in the first output only, when requested
    bool finished = false;
    std::string finish_reason;                        // "stop", "length", "abort", "error" when finished
    std::variant<std::monostate, std::string, int32_t> stop_reason;  // the stop string or token id
    int num_prompt_tokens = 0;
    int num_output_tokens = 0;  // cumulative for this sequence
    int num_cached_tokens = 0;  // prompt tokens served from the prefix cache
    std::string error;          // when finish_reason == "error"
};

// A thread-safe queue of a request's outputs. The engine thread pushes, one consumer pops.
class RequestStream {
public:
    void push(RequestOutput output);
    // Pops everything queued, waiting up to `timeout` for the first item; empty on timeout.
    std::vector<RequestOutput> wait_pop(std::chrono::milliseconds timeout);
    std::vector<RequestOutput> try_pop();
    // Called (on the engine thread) after every push, e.g. to wake an event loop. Set before submit.
    void set_notify(std::function<void()> notify);
    bool all_finished() const;  // every one of the request's n sequences has finished

    int num_sequences = 1;

private:
    mutable std::mutex m_mutex;
    std::condition_variable m_cv;
    std::deque<RequestOutput> m_queue;
    std::function<void()> m_notify;
    int m_num_finished = 0;
};

}  // namespace k2

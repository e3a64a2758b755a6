// Helpers for engine tests: run requests to completion and collect each sequence's outputs.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace k2::testing {

struct SeqResult {
    std::vector<int32_t> token_ids;
    std::vector<TokenLogprobs> logprobs;
    std::vector<TokenLogprobs> prompt_logprobs;
    std::string text;
    std::string finish_reason;
    std::variant<std::monostate, std::string, int32_t> stop_reason;
    int num_outputs = 0;
    int num_finished = 0;  // must end up exactly 1
    int num_cached_tokens = 0;
};

// Results by sequence index.
inline std::map<int, SeqResult> collect(RequestStream& stream) {
    std::map<int, SeqResult> results;
    for (RequestOutput& output : stream.try_pop()) {
        SeqResult& r = results[output.index];
        r.token_ids.insert(r.token_ids.end(), output.new_token_ids.begin(), output.new_token_ids.end());
        r.logprobs.insert(r.logprobs.end(), output.logprobs.begin(), output.logprobs.end());
        if (!output.prompt_logprobs.empty()) r.prompt_logprobs = output.prompt_logprobs;
        r.text += output.text_delta;
        r.num_outputs += 1;
        if (output.finished) {
            r.num_finished += 1;
            r.finish_reason = output.finish_reason;
            r.stop_reason = output.stop_reason;
            r.num_cached_tokens = output.num_cached_tokens;
        }
    }
    return results;
}

// Steps an engine without a loop thread until every request finished.
inline void run_to_completion(Engine& engine, int max_steps = 1000000) {
    for (int step = 0; engine.has_unfinished_requests(); ++step) {
        if (step >= max_steps) K2_FAIL("engine did not finish in {} steps", max_steps);
        engine.step();
    }
}

inline EngineRequest make_request(std::string id, std::vector<int32_t> prompt, int max_tokens) {
    EngineRequest request;
    request.request_id = std::move(id);
    request.prompt_token_ids = std::move(prompt);
    request.params.temperature = 0.0;
    request.params.max_tokens = max_tokens;
    request.params.ignore_eos = true;
    return request;
}

}  // namespace k2::testing

// Batch builder: turns a SchedulerOutput into the ForwardBatch the model runs, and records which logits
// rows belong to which sequence (prompt-logprob rows, the row to sample from).
#pragma once

#include <vector>

#include "engine/scheduler.h"
#include "kv/kv_cache_manager.h"
#include "model/forward_batch.h"

namespace k2 {

// Logits rows of one scheduled sequence.
struct SeqLogitRows {
    int prompt_row_begin = 0;       // rows [prompt_row_begin, + num_prompt_rows) give prompt logprobs
    int num_prompt_rows = 0;
    int first_prompt_position = 0;  // position of the first of those rows (its logprob is for the next token)
    int sample_row = -1;            // -1: a chunk of a prefill that does not reach the end yet
};

// --async-scheduling: an input row whose token is sampled by the step in flight; patch_placeholders writes it.
struct PlaceholderRow {
    int row = 0;  // index into batch.token_ids
    const Request* request = nullptr;
    int position = 0;  // the token's index in request->token_ids once it is sampled
};

struct BuiltBatch {
    ForwardBatch batch;
    std::vector<SeqLogitRows> rows;  // [num_seqs], in SchedulerOutput order
    int num_logits = 0;
    std::vector<PlaceholderRow> placeholders;
};

inline constexpr int32_t kPlaceholderTokenId = 0;  // any valid id: the row's KV is rewritten before it is read

BuiltBatch build_forward_batch(const SchedulerOutput& output, const KvCacheManager& kv);

// Writes each placeholder row's now sampled token into built.batch.token_ids. A sequence that ended without
// sampling it (aborted) keeps the placeholder id: its row's output is dropped. Returns the rows left unpatched.
int patch_placeholders(BuiltBatch& built);

}  // namespace k2

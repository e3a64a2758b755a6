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

struct BuiltBatch {
    ForwardBatch batch;
    std::vector<SeqLogitRows> rows;  // [num_seqs], in SchedulerOutput order
    int num_logits = 0;
};

BuiltBatch build_forward_batch(const SchedulerOutput& output, const KvCacheManager& kv);

}  // namespace k2

#include "engine/batch_builder.h"

#include <algorithm>

#include "core/error.h"

namespace k2 {

BuiltBatch build_forward_batch(const SchedulerOutput& output, const KvCacheManager& kv) {
    BuiltBatch built;
    ForwardBatch& batch = built.batch;
    const int block_size = kv.block_size();
    const auto num_seqs = output.seqs.size();
    int32_t max_blocks = 0;
    for (const ScheduledSeq& seq : output.seqs) {
        max_blocks = std::max(max_blocks, static_cast<int32_t>(kv.block_table(seq.request->seq_id).size()));
    }
    batch.max_blocks_per_seq = max_blocks;
    batch.block_tables.assign(num_seqs * static_cast<size_t>(max_blocks), -1);  // [num_seqs, max_blocks]
    batch.query_start.push_back(0);
    built.rows.resize(num_seqs);

    for (size_t seq_idx = 0; seq_idx < num_seqs; ++seq_idx) {
        const Request& request = *output.seqs[seq_idx].request;
        const int begin = request.num_computed_tokens;
        const int end = begin + output.seqs[seq_idx].num_new_tokens;
        const auto block_table = kv.block_table(request.seq_id);
        K2_CHECK(static_cast<int>(block_table.size()) * block_size >= end,
                 "sequence {} has {} blocks for {} tokens", request.seq_id, block_table.size(), end);
        std::copy(block_table.begin(), block_table.end(),
                  batch.block_tables.begin() + static_cast<std::ptrdiff_t>(seq_idx * static_cast<size_t>(max_blocks)));
        const int row_base = batch.num_tokens();
        for (int pos = begin; pos < end; ++pos) {
            if (pos >= request.num_tokens()) {  // sampled by the step in flight (--async-scheduling)
                built.placeholders.push_back({batch.num_tokens(), &request, pos});
                batch.token_ids.push_back(kPlaceholderTokenId);
            } else {
                batch.token_ids.push_back(request.token_ids[static_cast<size_t>(pos)]);
            }
            batch.positions.push_back(pos);
            batch.slot_mapping.push_back(static_cast<int64_t>(block_table[static_cast<size_t>(pos / block_size)]) *
                                             block_size + pos % block_size);
        }
        batch.query_start.push_back(batch.num_tokens());
        batch.seq_lens.push_back(end);

        SeqLogitRows& rows = built.rows[seq_idx];
        if (!request.prompt_logprobs_done()) {
            // Row at position p holds the distribution of prompt token p + 1.
            const int first = std::max(begin, static_cast<int>(request.prompt_logprobs.size()));
            const int last = std::min(end, request.num_prompt_tokens - 1);
            rows.prompt_row_begin = static_cast<int>(batch.logits_indices.size());
            rows.first_prompt_position = first;
            for (int pos = first; pos < last; ++pos) batch.logits_indices.push_back(row_base + pos - begin);
            rows.num_prompt_rows = std::max(0, last - first);
        }
        if (end == request.num_tokens_with_placeholders()) {
            rows.sample_row = static_cast<int>(batch.logits_indices.size());
            batch.logits_indices.push_back(row_base + end - 1 - begin);
        }
    }
    built.num_logits = static_cast<int>(batch.logits_indices.size());
    return built;
}

int patch_placeholders(BuiltBatch& built) {
    int num_unpatched = 0;
    for (const PlaceholderRow& placeholder : built.placeholders) {
        const Request& request = *placeholder.request;
        if (placeholder.position < request.num_tokens()) {
            built.batch.token_ids[static_cast<size_t>(placeholder.row)] =
                request.token_ids[static_cast<size_t>(placeholder.position)];
        } else {
            K2_CHECK(request.is_finished(), "sequence {}: token {} was not sampled before the step that reads it",
                     request.seq_id, placeholder.position);
            num_unpatched += 1;
        }
    }
    return num_unpatched;
}

}  // namespace k2

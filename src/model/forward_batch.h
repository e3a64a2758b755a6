// ForwardBatch: one scheduler step's work as plain host data, built by the engine's batch builder
// and consumed by Model::forward. Sequences are laid out back to back in token order.
#pragma once

#include <cstdint>
#include <vector>

namespace k2 {

struct ForwardBatch {
    std::vector<int32_t> token_ids;       // [num_tokens] new tokens of all sequences
    std::vector<int32_t> positions;       // [num_tokens] absolute position of each new token
    std::vector<int32_t> query_start;     // [num_seqs + 1] start of each sequence's new tokens
    std::vector<int32_t> seq_lens;        // [num_seqs] context length after this step (cached + new)
    std::vector<int32_t> block_tables;    // [num_seqs, max_blocks_per_seq] physical KV block ids, -1 padded
    int32_t max_blocks_per_seq = 0;
    std::vector<int64_t> slot_mapping;    // [num_tokens] block_id * block_size + offset of each new token
    std::vector<int32_t> logits_indices;  // [num_logits] rows of token_ids whose logits are returned

    int num_tokens() const { return static_cast<int>(token_ids.size()); }
    int num_seqs() const { return static_cast<int>(seq_lens.size()); }
};

}  // namespace k2

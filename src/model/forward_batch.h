// ForwardBatch: one scheduler step's work as plain host data, built by the engine's batch builder
// and consumed by Model::forward. Sequences are laid out back to back in token order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace k2 {

// Sampling by the model on its device (Model::samples_on_device): what one logits row gets.
enum class RowSampling : int32_t {
    Host = 0,         // the row's logits go to the host (the engine's sampler, logprobs, penalties, ...)
    Greedy = 1,       // the first largest logit
    Temperature = 2,  // an inverse-CDF draw from softmax(logits / T) at `uniform` (engine/sampler.h)
    Filtered = 3,     // the same after min-p, top-k and top-p (engine/sampler.h: sampling_distribution)
};

struct DeviceSampleRow {
    RowSampling mode = RowSampling::Host;
    float inv_temperature = 1.0f;  // float(1 / T), as the host sampler weighs
    double uniform = 0.0;          // drawn from the request's generator when the batch is built
    // Filtered rows: SamplingParams' filters, and T as the host softmax divides by it.
    double temperature = 1.0;
    double top_p = 1.0;
    double min_p = 0.0;
    int32_t top_k = 0;
};

struct ForwardBatch {
    std::vector<int32_t> token_ids;     // [num_tokens] new tokens of all sequences
    std::vector<int32_t> positions;     // [num_tokens] absolute position of each new token
    std::vector<int32_t> query_start;   // [num_seqs + 1] start of each sequence's new tokens
    std::vector<int32_t> seq_lens;      // [num_seqs] context length after this step (cached + new)
    std::vector<int32_t> block_tables;  // [num_seqs, max_blocks_per_seq] physical KV block ids, -1 padded
    int32_t max_blocks_per_seq = 0;
    std::vector<int64_t> slot_mapping;    // [num_tokens] block_id * block_size + offset of each new token
    std::vector<int32_t> logits_indices;  // [num_logits] rows of token_ids whose logits are returned
    // [num_logits] or empty (all rows to the host): set only for a model that samples on its device.
    std::vector<DeviceSampleRow> device_sampling;
    // Data + expert parallelism on GPUs: [dp] every DP replica's token count in this world step (set by the
    // executor on every replica's batch, an empty dummy's too). The CUDA model pads its expert exchange to the
    // largest and keeps the padding rows away from the experts, without a collective to learn them; empty elsewhere.
    std::vector<int32_t> dp_num_tokens;
    // Data + expert parallelism: every busy replica's batch in this world step is a decode batch (one new token per
    // sequence), so the CUDA models of all replicas may replay their padded decode graphs together (the exchange size
    // must be the same on every rank); set by the executor with dp_num_tokens.
    bool dp_decode_only = false;
    int32_t dp_padded_tokens() const {  // the largest of dp_num_tokens (0 when empty)
        int32_t most = 0;
        for (const int32_t n : dp_num_tokens) {
            most = std::max(most, n);
        }
        return most;
    }

    int num_tokens() const { return static_cast<int>(token_ids.size()); }
    bool is_decode() const {  // one new token per sequence (an empty batch is not a decode batch)
        if (seq_lens.empty() || query_start.size() != seq_lens.size() + 1) {
            return false;
        }
        for (size_t s = 0; s < seq_lens.size(); ++s) {
            if (query_start[s + 1] - query_start[s] != 1) {
                return false;
            }
        }
        return true;
    }
    int num_seqs() const { return static_cast<int>(seq_lens.size()); }
};

}  // namespace k2

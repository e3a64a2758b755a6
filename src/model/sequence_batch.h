// Building ForwardBatches by hand, for the simple generation loop of `k2 logits` / `k2 generate` and the
// model tests. (The engine has its own batch builder on top of its scheduler and block pool.)
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/tensor.h"
#include "model/forward_batch.h"
#include "model/model.h"

namespace k2 {

// One sequence's part of a step.
struct SequenceChunk {
    std::span<const int32_t> tokens;  // [n] new tokens
    int32_t num_cached = 0;           // tokens of this sequence already in the cache (= first new position)
    std::span<const int32_t> blocks;  // the sequence's block table, covering num_cached + n tokens
    bool all_logits = false;          // logits of every new token, else of the last one only
};

ForwardBatch build_forward_batch(std::span<const SequenceChunk> chunks);

// One sequence on blocks 0, 1, 2, ...: append tokens, get logits. The model's cache is (re)allocated to fit
// max_tokens.
class SingleSequence {
public:
    SingleSequence(Model& model, int max_tokens);

    // Runs `tokens` as one step; returns logits [n, vocab] (all_logits) or [1, vocab] for the last token.
    Tensor append(std::span<const int32_t> tokens, bool all_logits);
    int num_tokens() const { return m_num_tokens; }

private:
    Model& m_model;
    std::vector<int32_t> m_blocks;
    int m_num_tokens = 0;
};

}  // namespace k2

#include "model/sequence_batch.h"

#include <algorithm>

namespace k2 {

ForwardBatch build_forward_batch(std::span<const SequenceChunk> chunks) {
    ForwardBatch b;
    for (const SequenceChunk& c : chunks) {
        b.max_blocks_per_seq = std::max(b.max_blocks_per_seq, static_cast<int32_t>(c.blocks.size()));
    }
    b.query_start.push_back(0);
    for (const SequenceChunk& c : chunks) {
        const auto n = static_cast<int32_t>(c.tokens.size());
        K2_CHECK(n > 0, "a sequence chunk needs at least one token");
        K2_CHECK(static_cast<int64_t>(c.blocks.size()) * kKvBlockSize >= c.num_cached + n,
                 "{} blocks cannot hold {} tokens", c.blocks.size(), c.num_cached + n);
        for (int32_t i = 0; i < n; ++i) {
            const int32_t pos = c.num_cached + i;
            if (c.all_logits || i == n - 1) {
                b.logits_indices.push_back(b.num_tokens());
            }
            b.token_ids.push_back(c.tokens[static_cast<size_t>(i)]);
            b.positions.push_back(pos);
            b.slot_mapping.push_back(int64_t{c.blocks[static_cast<size_t>(pos / kKvBlockSize)]} * kKvBlockSize +
                                     pos % kKvBlockSize);
        }
        b.query_start.push_back(b.num_tokens());
        b.seq_lens.push_back(c.num_cached + n);
        std::vector<int32_t> row(c.blocks.begin(), c.blocks.end());
        row.resize(static_cast<size_t>(b.max_blocks_per_seq), -1);
        b.block_tables.insert(b.block_tables.end(), row.begin(), row.end());
    }
    return b;
}

SingleSequence::SingleSequence(Model& model, int max_tokens) : m_model(model) {
    K2_CHECK(max_tokens > 0, "a sequence needs room for at least one token");
    const int num_blocks = (max_tokens + kKvBlockSize - 1) / kKvBlockSize;
    m_model.allocate_kv_cache(num_blocks);
    for (int i = 0; i < num_blocks; ++i)
        m_blocks.push_back(i);
}

Tensor SingleSequence::append(std::span<const int32_t> tokens, bool all_logits) {
    const SequenceChunk chunk{tokens, m_num_tokens, m_blocks, all_logits};
    Tensor logits = m_model.forward(build_forward_batch({&chunk, 1}));
    m_num_tokens += static_cast<int>(tokens.size());
    return logits;
}

}  // namespace k2

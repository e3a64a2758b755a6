// FakeModel: a Model whose "KV cache" stores (token, position) per slot and whose logits are a hash of
// the whole context read back through the block tables. A wrong slot mapping, block table, seq_len or
// a prefix-cache hit on the wrong block changes the logits, so engine tests see it; reference_logits()
// computes the same logits straight from a token list (an independent full recompute).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "model/model.h"

namespace k2::testing {

// What the engine asked of the model, for scheduler-budget assertions.
struct FakeModelLog {
    int num_forwards = 0;
    int max_tokens_per_forward = 0;
    int max_seqs_per_forward = 0;
    int64_t total_tokens = 0;
    int allocated_blocks = 0;
};

inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

// [vocab_size] logits after the context `tokens` (the last one is the current token). Tokens outside
// `allowed` (when given) get -100, so tests can keep outputs to e.g. ASCII tokens.
inline std::vector<float> reference_logits(std::span<const int32_t> tokens, int vocab_size,
                                           const std::vector<bool>* allowed = nullptr) {
    uint64_t context = 0x9e3779b97f4a7c15ull;
    for (size_t pos = 0; pos < tokens.size(); ++pos) {
        context = mix64(context ^ (static_cast<uint64_t>(tokens[pos]) + (static_cast<uint64_t>(pos) << 32)));
    }
    std::vector<float> logits(static_cast<size_t>(vocab_size));
    for (int v = 0; v < vocab_size; ++v) {
        const uint64_t bits = mix64(context + static_cast<uint64_t>(v) * 0x632be59bd9b4e019ull);
        logits[static_cast<size_t>(v)] = static_cast<float>(static_cast<double>(bits >> 11) * 0x1.0p-53 * 8.0 - 4.0);
        if (allowed != nullptr && !(*allowed)[static_cast<size_t>(v)]) logits[static_cast<size_t>(v)] = -100.0f;
    }
    return logits;
}

class FakeModel final : public Model {
public:
    explicit FakeModel(int vocab_size = 256, int64_t max_position_embeddings = 4096,
                       std::shared_ptr<FakeModelLog> log = std::make_shared<FakeModelLog>())
        : m_log(std::move(log)) {
        m_config.model_type = "fake";
        m_config.vocab_size = vocab_size;
        m_config.max_position_embeddings = max_position_embeddings;
        m_config.eos_token_ids = {vocab_size - 1};
    }

    void set_allowed_tokens(std::vector<bool> allowed) { m_allowed = std::move(allowed); }

    const ModelConfig& config() const override { return m_config; }
    size_t kv_cache_bytes_per_block() const override { return kKvBlockSize * sizeof(int64_t); }
    void allocate_kv_cache(int num_blocks) override {
        m_num_blocks = num_blocks;
        m_cache.assign(static_cast<size_t>(num_blocks) * kKvBlockSize, -1);  // poison: unwritten slots
        m_log->allocated_blocks = num_blocks;
    }

    Tensor forward(const ForwardBatch& batch) override {
        const int num_tokens = batch.num_tokens();
        K2_CHECK(static_cast<int>(batch.positions.size()) == num_tokens &&
                     static_cast<int>(batch.slot_mapping.size()) == num_tokens,
                 "fake model: inconsistent batch");
        K2_CHECK(static_cast<int>(batch.query_start.size()) == batch.num_seqs() + 1, "fake model: bad query_start");
        m_log->num_forwards += 1;
        m_log->max_tokens_per_forward = std::max(m_log->max_tokens_per_forward, num_tokens);
        m_log->max_seqs_per_forward = std::max(m_log->max_seqs_per_forward, batch.num_seqs());
        m_log->total_tokens += num_tokens;
        for (int i = 0; i < num_tokens; ++i) {
            const int64_t slot = batch.slot_mapping[static_cast<size_t>(i)];
            K2_CHECK(slot >= 0 && slot < static_cast<int64_t>(m_cache.size()), "fake model: slot {} out of range", slot);
            m_cache[static_cast<size_t>(slot)] = (static_cast<int64_t>(batch.positions[static_cast<size_t>(i)]) << 32) |
                                                 static_cast<uint32_t>(batch.token_ids[static_cast<size_t>(i)]);
        }
        const auto vocab = m_config.vocab_size;
        Tensor logits = Tensor::zeros(DType::F32, {static_cast<int64_t>(batch.logits_indices.size()), vocab});
        for (size_t r = 0; r < batch.logits_indices.size(); ++r) {
            const int row = batch.logits_indices[r];
            int seq = 0;
            while (batch.query_start[static_cast<size_t>(seq) + 1] <= row) ++seq;
            const auto context = read_context(batch, seq, batch.positions[static_cast<size_t>(row)]);
            const auto row_logits = reference_logits(context, static_cast<int>(vocab), m_allowed.empty() ? nullptr : &m_allowed);
            std::copy(row_logits.begin(), row_logits.end(), logits.data_as<float>() + r * static_cast<size_t>(vocab));
        }
        return logits;
    }

private:
    // Tokens at positions [0, position] of sequence `seq`, read through its block table.
    std::vector<int32_t> read_context(const ForwardBatch& batch, int seq, int position) const {
        K2_CHECK(position < batch.seq_lens[static_cast<size_t>(seq)], "fake model: row beyond seq_len");
        std::vector<int32_t> tokens;
        for (int pos = 0; pos <= position; ++pos) {
            const auto block_idx = static_cast<size_t>(seq) * static_cast<size_t>(batch.max_blocks_per_seq) +
                                   static_cast<size_t>(pos / kKvBlockSize);
            const int32_t block = batch.block_tables[block_idx];
            K2_CHECK(block >= 0 && block < m_num_blocks, "fake model: block {} out of range", block);
            const int64_t entry = m_cache[static_cast<size_t>(block) * kKvBlockSize + pos % kKvBlockSize];
            K2_CHECK(entry >= 0 && (entry >> 32) == pos, "fake model: stale KV at position {}", pos);
            tokens.push_back(static_cast<int32_t>(entry & 0xffffffff));
        }
        return tokens;
    }

    ModelConfig m_config;
    std::vector<bool> m_allowed;  // empty: every token
    std::shared_ptr<FakeModelLog> m_log;
    int m_num_blocks = 0;
    std::vector<int64_t> m_cache;  // [num_blocks * kKvBlockSize] (position << 32 | token), -1 unwritten
};

// Greedy continuation by full recompute over reference_logits.
inline std::vector<int32_t> reference_greedy(std::vector<int32_t> tokens, int num_new, int vocab_size,
                                             const std::vector<bool>* allowed = nullptr) {
    std::vector<int32_t> generated;
    for (int i = 0; i < num_new; ++i) {
        const auto logits = reference_logits(tokens, vocab_size, allowed);
        const auto next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
        generated.push_back(next);
        tokens.push_back(next);
    }
    return generated;
}

}  // namespace k2::testing

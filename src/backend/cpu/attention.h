// MLA attention in the absorbed form over a paged latent cache, the CPU reference.
// One cache entry per token (shared by all heads): [c_kv (kv_lora_rank) | roped k_pe (rope_dim)].
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace k2::cpu {

// Cache storage: F32, BF16, or F8_E4M3 holding value / kv_scale (saturated to +-448).
struct LatentCacheView {
    void* data = nullptr;  // [num_slots, entry_dim] where slot = block_id * block_size + offset
    DType dtype = DType::F32;
    int64_t num_slots = 0;
    int64_t entry_dim = 0;  // kv_lora_rank + rope_dim
    float kv_scale = 1.0f;  // F8_E4M3 only: stored = e4m3(value / kv_scale)
};

// cache[slot_mapping[t], :] = kv[t, :] for t < num_tokens; kv: [num_tokens, entry_dim] fp32,
// slot_mapping: [num_tokens] (a negative slot skips the token, as vLLM's padding slots do).
void write_latent_cache(const float* kv, int64_t num_tokens, const int64_t* slot_mapping, const LatentCacheView& cache);

// Reads one entry back as fp32: out [entry_dim].
void read_latent_entry(const LatentCacheView& cache, int64_t slot, float* out);

struct MlaAttentionArgs {
    const float* q = nullptr;  // [num_tokens, num_heads, kv_lora_rank + rope_dim]: W_UK^T q_nope | roped q_pe
    int64_t num_tokens = 0;
    int64_t num_heads = 0;
    int64_t kv_lora_rank = 0;
    int64_t rope_dim = 0;
    LatentCacheView cache;                  // entry_dim == kv_lora_rank + rope_dim
    int64_t block_size = 64;                // tokens per block
    const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq] block ids, -1 padded
    int64_t max_blocks_per_seq = 0;
    const int32_t* query_start = nullptr;  // [num_seqs + 1] token range of each sequence
    int64_t num_seqs = 0;
    const int32_t* positions = nullptr;  // [num_tokens] token t attends to its sequence's positions 0..positions[t]
    float softmax_scale = 1.0f;
    float* out = nullptr;  // [num_tokens, num_heads, kv_lora_rank] sum_s P(s) c_kv(s)
};

// For each token t (sequence s) and head h: scores(j) = softmax_scale * q[t, h, :] . cache[slot(s, j), :] over
// j = 0..positions[t] (causal), softmax in fp32, out[t, h, :] = sum_j P(j) cache[slot(s, j), 0:kv_lora_rank].
void mla_attention_absorbed(const MlaAttentionArgs& args);

}  // namespace k2::cpu

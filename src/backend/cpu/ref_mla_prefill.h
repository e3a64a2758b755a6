// Plain causal variable-length multi-head attention in fp32/fp64, the CPU reference of the non-absorbed MLA
// prefill kernel (cuda/mla_prefill.h). No tiling, no online softmax: scores of all keys, then one softmax.
#pragma once

#include <cstdint>

namespace k2::cpu {

struct CausalAttentionArgs {
    const float* q = nullptr;               // [num_tokens, heads, d_qk]
    const float* k = nullptr;               // [num_ctx, heads, d_qk]
    const float* v = nullptr;               // [num_ctx, heads, d_v]
    const int32_t* cu_seqlens_q = nullptr;  // [num_seqs + 1]
    const int32_t* cu_seqlens_k = nullptr;  // [num_seqs + 1]
    int64_t num_seqs = 0;
    int64_t heads = 0;
    int64_t d_qk = 0;
    int64_t d_v = 0;
    float softmax_scale = 1.0f;
    float* out = nullptr;  // [num_tokens, heads, d_v]
};

// Query i of sequence s (q_len queries, k_len >= q_len keys) sits at position k_len - q_len + i and attends to keys
// 0..position: out = softmax(scale * q . k) v, dot products and sums in double.
void causal_attention(const CausalAttentionArgs& args);

}  // namespace k2::cpu

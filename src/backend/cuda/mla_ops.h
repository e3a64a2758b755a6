// MLA ops of the CUDA model runner around the attention kernels: the latent KV store (kv_a_layernorm + RoPE +
// paged-cache write, BF16 or FP8 cache), the query RoPE into the absorbed query, and a general absorbed MLA
// attention for prefill and decode over the paged cache (any kv_lora_rank <= 512, rope_dim <= 64, head count;
// BF16 or FP8 cache). The decode fast path for Kimi-K2 shapes is mla_decode.h.
// CPU references: cpu::rms_norm, cpu::rope_interleaved, cpu::write_latent_cache, cpu::mla_attention_absorbed.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace k2::cuda {

inline constexpr int kMlaMaxLatent = 512;
inline constexpr int kMlaMaxRope = 64;

// Latent cache storage: one entry [kv_lora_rank | rope_dim] per token slot (slot = block * block_size + offset).
struct LatentCacheRef {
    void* data = nullptr;  // [num_slots, entry_dim] bf16, or e4m3 holding value / kv_scale (saturated to +-448)
    bool fp8 = false;
    float kv_scale = 1.0f;
    int64_t num_slots = 0;
};

// For each token t with slot_mapping[t] >= 0:
//   cache[slot, 0:lat]        = rms_norm(kv[t, 0:lat]) * norm_weight (eps), in fp32, rounded once to the cache type
//   cache[slot, lat:lat+rope] = rope_interleaved(kv[t, lat:lat+rope], positions[t])
struct LatentStoreParams {
    const uint16_t* kv = nullptr;  // [num_tokens, lat + rope] bf16 (kv_a_proj_with_mqa output), row stride kv_stride
    const uint16_t* norm_weight = nullptr;  // [lat] bf16 kv_a_layernorm
    const int32_t* positions = nullptr;     // [num_tokens]
    const int64_t* slot_mapping = nullptr;  // [num_tokens], negative: skip
    const float* inv_freq = nullptr;        // [rope / 2] (cpu::yarn_inv_freq)
    float rope_scale = 1.0f;                // cos/sin multiplier (cpu::yarn_cos_sin_scale)
    float eps = 1e-6f;
    LatentCacheRef cache;
    int64_t num_tokens = 0;
    int64_t kv_stride = 0;
    int lat = 0;
    int rope = 0;
};

// q_abs[t, h, lat:lat+rope] = rope_interleaved(q[t, h, nope:nope+rope], positions[t]); q_abs[.., 0:lat] is left
// alone (the W_UK GEMM writes it).
struct QueryRopeParams {
    const uint16_t* q = nullptr;         // [num_tokens, heads, nope + rope] bf16 (q_b_proj output)
    uint16_t* q_abs = nullptr;           // [num_tokens, heads, lat + rope] bf16
    const int32_t* positions = nullptr;  // [num_tokens]
    const float* inv_freq = nullptr;     // [rope / 2]
    float rope_scale = 1.0f;
    int64_t num_tokens = 0;
    int heads = 0;
    int nope = 0;
    int rope = 0;
    int lat = 0;
};

// Token t of sequence s = token_seq[t], head h: scores(j) = softmax_scale * q[t, h, :] . cache[slot(s, j), :] for
// j = 0..positions[t] (causal by position, so prefill chunks attend to cached prefix blocks), softmax in fp32,
// out[t, h, :] = sum_j P(j) cache[slot(s, j), 0:lat], rounded once to bf16. slot(s, j) =
// block_tables[s, j / block_size] * block_size + j % block_size. positions[t] = -1 attends to nothing (out 0,
// lse -inf): decode context parallelism passes each rank's last local key index there, and its own block_size.
struct MlaAttentionParams {
    const uint16_t* q = nullptr;  // [num_tokens, heads, lat + rope] bf16
    LatentCacheRef cache;
    const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
    const int32_t* token_seq = nullptr;     // [num_tokens] sequence index of each token
    const int32_t* positions = nullptr;     // [num_tokens]
    uint16_t* out = nullptr;                // [num_tokens, heads, lat] bf16
    float* lse = nullptr;                   // optional [num_tokens, heads]: ln sum_j exp(scaled score j), -inf if none
    int64_t num_tokens = 0;
    int heads = 0;
    int lat = 0;
    int rope = 0;
    int block_size = 64;
    int max_blocks_per_seq = 0;
    int max_context = 0;  // host bound of positions[t] + 1 (sizes splits; 0: unknown)
    float softmax_scale = 1.0f;
};

void launch_latent_store(const LatentStoreParams& params, cudaStream_t stream);
void launch_query_rope(const QueryRopeParams& params, cudaStream_t stream);
void launch_mla_attention(const MlaAttentionParams& params, cudaStream_t stream);

}  // namespace k2::cuda

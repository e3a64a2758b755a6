// Absorbed MLA decode attention over the paged latent cache (BF16), split-KV + log-sum-exp combine.
// One query token per sequence; every head attends to the sequence's cached tokens 0..seq_len-1:
//   s(j) = softmax_scale * q[b, h, :] . cache[slot(b, j), :]   (576 = 512 latent + 64 rope)
//   out[b, h, :] = sum_j softmax(s)(j) * cache[slot(b, j), 0:512]
// The CPU reference is cpu::mla_attention_absorbed. The cache is BF16 (`cache`) or e4m3 codes of value / kv_scale
// (`cache_fp8`, vLLM's fp8 KV cache: half the bytes per token).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace k2::cuda {

inline constexpr int kMlaLatent = 512;
inline constexpr int kMlaRope = 64;
inline constexpr int kMlaEntry = kMlaLatent + kMlaRope;  // 576
inline constexpr int kMlaPageTokens = 64;
inline constexpr int kMlaHeadsPerCta = 64;

// Which split kernel runs: the wgmma kernel (kernels/mla_decode_wgmma.cuh, TMA-fed, bandwidth-bound) or the mma.sync
// one (kernels/mla_decode.cuh). Auto takes the wgmma kernel unless the environment says K2_MLA_DECODE_KERNEL=mma
// (A/B runs). Both compute the same function with the same workspace (the wgmma kernel leaves it untouched when it
// combines 1-2 splits inside a thread-block cluster).
enum class MlaDecodeKernel { Auto, Mma, Wgmma };

struct MlaDecodeParams {
    const uint16_t* q = nullptr;            // [num_seqs, num_heads, 576] bf16 (W_UK^T q_nope | roped q_pe)
    const uint16_t* cache = nullptr;        // [num_blocks, 64, 576] bf16 paged latent cache, or
    const uint8_t* cache_fp8 = nullptr;     // [num_blocks, 64, 576] e4m3 codes of value / kv_scale (set one of the two)
    float kv_scale = 1.0f;                  // cache_fp8 only
    const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq] block ids
    const int32_t* seq_lens = nullptr;      // [num_seqs] cached tokens per sequence (>= 1)
    float* out = nullptr;                   // [num_seqs, num_heads, 512] f32, or
    uint16_t* out_bf16 = nullptr;           // [num_seqs, num_heads, 512] bf16 (set one of the two; wgmma kernel only)
    float* workspace = nullptr;             // mla_decode_workspace_floats(...) f32: split partials
    int64_t num_seqs = 0;
    int num_heads = 64;  // a multiple of 64, or fewer (a TP rank's heads: zero-padded to 64)
    int max_blocks_per_seq = 0;
    int max_seq_len = 0;  // host-side bound of seq_lens (chooses the split count)
    float softmax_scale = 1.0f;
    int num_splits = 0;  // 0: chosen by the launcher
    MlaDecodeKernel kernel = MlaDecodeKernel::Auto;
};

// CTAs per sequence along the heads: 64 heads each, the last group zero-padded.
inline int64_t mla_decode_head_groups(int64_t num_heads) {
    return (num_heads + kMlaHeadsPerCta - 1) / kMlaHeadsPerCta;
}

// Splits the launcher would use, and the workspace they need (floats).
int mla_decode_num_splits(const MlaDecodeParams& params, int num_sms);
int64_t mla_decode_workspace_floats(const MlaDecodeParams& params, int num_splits);

// The kernel launch_mla_decode runs for `params` (Auto resolved).
MlaDecodeKernel mla_decode_kernel(const MlaDecodeParams& params);

void launch_mla_decode(const MlaDecodeParams& params, cudaStream_t stream);

}  // namespace k2::cuda

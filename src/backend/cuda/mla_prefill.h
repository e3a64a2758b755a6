// Non-absorbed MLA prefill attention (FlashMLA / vLLM's prefill path): the latent context is first expanded by
// kv_b_proj into per-head K_nope and V (a BF16 GEMM over the context tokens), then a causal variable-length
// flash-attention forward runs with d_qk = nope + rope = 192 and d_v = 128 (Kimi-K2 and DeepSeek-V3 shapes).
// Per 8k causal tokens this does (192 + 128) / (576 + 512) = 0.29x the FLOPs of the absorbed form (mla_ops.h).
// CPU reference: cpu::causal_attention (ref_mla_prefill.h) on K = [K_nope | k_pe broadcast over heads].
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/bf16_gemm.h"
#include "backend/cuda/mla_ops.h"

namespace k2::cuda {

inline constexpr int kMlaPrefillNope = 128;
inline constexpr int kMlaPrefillRope = 64;
inline constexpr int kMlaPrefillDv = 128;

// Which flash kernel launch_mla_prefill runs. kAuto: the wgmma kernel (docs/perf/mla-prefill-wgmma.md); every
// kernel supports every MlaPrefillParams (1-65535 heads, variable lengths, cached prefixes), so there is no fallback.
enum class MlaPrefillKernel {
    kAuto,
    kMmaSync,          // kernels/mla_prefill.cuh: mma.sync m16n8k16, FlashAttention-2's structure (warps_per_cta)
    kWgmma,            // kernels/mla_prefill_wgmma.cuh: wgmma, both warpgroups in lockstep
    kWgmmaPingPong,    // the same with the two warpgroups taking turns on the tensor cores (FA3's ping-pong)
    kWgmmaOverlap,     // lockstep, the softmax's exp2 part overlapping the previous tile's P V
    kWgmmaHeadsInner,  // kWgmma with the heads as the grid's fastest dimension (the mma.sync kernel's CTA order)
};

// Sequence s owns query tokens cu_seqlens_q[s] .. cu_seqlens_q[s + 1] and context tokens cu_seqlens_k[s] ..
// cu_seqlens_k[s + 1] (its whole context: cached prefix + this chunk), q_len <= k_len. The queries sit at the end
// of the context: query i of sequence s has position k_len - q_len + i and attends to context keys 0..position.
// For every query token t of sequence s and head h:
//   score(j) = softmax_scale * ([q_nope | q_pe][t, h, :] . [k_nope[j, h, :] | k_pe[j, :]])   (192 dims)
//   out[t, h, :] = sum_j softmax(score)(j) v[j, h, :], fp32 softmax / accumulation, rounded once to bf16.
// P is rounded to bf16 for the P.V product (as FlashAttention does). All strides are in elements and must be
// multiples of 8 with 16-byte aligned pointers (16-byte cp.async loads).
struct MlaPrefillParams {
    const uint16_t* q = nullptr;            // [num_tokens, heads, 192] bf16: q_nope | roped q_pe; token stride q_stride
    const uint16_t* k_nope = nullptr;       // [num_ctx, heads, 128] bf16; token stride kv_stride, head kv_head_stride
    const uint16_t* v = nullptr;            // [num_ctx, heads, 128] bf16; same strides as k_nope
    const uint16_t* k_pe = nullptr;         // [num_ctx, 64] bf16 roped k_pe (shared by all heads); k_pe_stride
    const int32_t* cu_seqlens_q = nullptr;  // [num_seqs + 1] on the device
    const int32_t* cu_seqlens_k = nullptr;  // [num_seqs + 1] on the device
    uint16_t* out = nullptr;                // [num_tokens, heads, 128] bf16; token stride out_stride
    int64_t num_tokens = 0;                 // cu_seqlens_q[num_seqs]; 0: nothing to do
    int64_t q_stride = 0;
    int64_t kv_stride = 0;
    int64_t kv_head_stride = 0;
    int64_t k_pe_stride = 0;
    int64_t out_stride = 0;
    int num_seqs = 0;
    int heads = 0;
    int max_q_len = 0;  // host bound of every q_len (sizes the grid)
    float softmax_scale = 1.0f;
    int warps_per_cta = 8;  // kMmaSync tuning: 8 (16 rows per warp, Q in registers) or 4 (32 rows per warp)
    MlaPrefillKernel kernel = MlaPrefillKernel::kAuto;
};

void launch_mla_prefill(const MlaPrefillParams& params, cudaStream_t stream);

// out[i, :] = cache[slots[i], :] as bf16 (an FP8 cache's codes times kv_scale): the latent entries of every context
// token of a prefill step, contiguous for the kv_b expansion GEMM.
struct LatentGatherParams {
    LatentCacheRef cache;            // [num_slots, entry] bf16 or e4m3
    const int64_t* slots = nullptr;  // [num_rows] on the device, each in 0..num_slots-1
    uint16_t* out = nullptr;         // [num_rows, entry] bf16
    int64_t num_rows = 0;
    int entry = 0;  // kv_lora_rank + rope, a multiple of 8
};

void launch_latent_gather(const LatentGatherParams& params, cudaStream_t stream);

// The whole non-absorbed prefill attention of one MLA layer, from the q_b output and the paged latent cache (which
// already holds this step's tokens) to the per-head attention output that o_proj takes:
//   1. latent_ctx = gather of every context token's latent entry (launch_latent_gather);
//   2. k_nope_ctx = c_kv W_UK^T and v_ctx = c_kv W_UV^T over all heads (two BF16 GEMMs, n = heads * 128);
//   3. q_pe is roped in place (launch_query_rope with lat = nope);
//   4. launch_mla_prefill with k_pe read from latent_ctx.
struct MlaPrefillForwardParams {
    uint16_t* q = nullptr;               // [num_tokens, heads, 192] bf16 q_b output; q_pe is roped in place
    const int32_t* positions = nullptr;  // [num_tokens]
    const float* inv_freq = nullptr;     // [32] (cpu::yarn_inv_freq)
    float rope_scale = 1.0f;
    LatentCacheRef cache;
    const int64_t* ctx_slots = nullptr;     // [num_ctx] cache slot of each context token, sequences back to back
    const uint16_t* w_uk = nullptr;         // [heads, 128, lat] bf16 (kv_b_proj's K rows)
    const uint16_t* w_uv = nullptr;         // [heads, 128, lat] bf16 (kv_b_proj's V rows)
    const int32_t* cu_seqlens_q = nullptr;  // [num_seqs + 1]
    const int32_t* cu_seqlens_k = nullptr;  // [num_seqs + 1], cu_seqlens_k[num_seqs] == num_ctx
    uint16_t* latent_ctx = nullptr;         // [num_ctx, lat + 64] bf16 workspace
    uint16_t* k_nope_ctx = nullptr;         // [num_ctx, heads, 128] bf16 workspace
    uint16_t* v_ctx = nullptr;              // [num_ctx, heads, 128] bf16 workspace
    uint16_t* out = nullptr;                // [num_tokens, heads, 128] bf16
    int64_t num_tokens = 0;
    int64_t num_ctx = 0;
    int num_seqs = 0;
    int heads = 0;
    int lat = 0;
    int max_q_len = 0;
    float softmax_scale = 1.0f;
    MlaPrefillKernel kernel = MlaPrefillKernel::kAuto;  // the flash kernel of step 4
};

void run_mla_prefill_forward(Bf16GemmRunner& gemm, const MlaPrefillForwardParams& params, cudaStream_t stream);

}  // namespace k2::cuda

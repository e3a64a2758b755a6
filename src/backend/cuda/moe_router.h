// DeepSeek-V3 / Kimi-K2 "noaux_tc" MoE router on the GPU (the CPU reference is cpu::moe_route, same semantics):
// scores = sigmoid(logits); choice = scores + e_score_correction_bias (selection only); group score = sum of the
// top-2 choices of each of n_group groups; choices outside the topk_group best groups become 0.0 (transformers'
// masked_fill value); the top_k choices are selected in descending order (ties: the lower expert id); weights =
// their un-biased scores, / (sum + 1e-20) when norm_topk_prob, * routed_scaling_factor.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace k2::cuda {

inline constexpr int kRouterMaxExperts = 512;
inline constexpr int kRouterMaxTopK = 16;

struct MoeRouterParams {
    const float* logits = nullptr;  // [num_tokens, num_experts] f32 router logits (x @ W_gate^T)
    const float* bias = nullptr;    // [num_experts] f32 e_score_correction_bias, or null
    int32_t* topk_ids = nullptr;    // [num_tokens, top_k] out
    float* topk_weights = nullptr;  // [num_tokens, top_k] out
    int64_t num_tokens = 0;
    int num_experts = 0;  // <= 512
    int n_group = 1;      // divides num_experts, <= 32
    int topk_group = 1;
    int top_k = 1;        // <= 16
    bool norm_topk_prob = true;
    float routed_scaling_factor = 1.0f;
};

void launch_moe_router(const MoeRouterParams& params, cudaStream_t stream);

}  // namespace k2::cuda

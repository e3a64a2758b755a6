// DeepSeek-V3 "noaux_tc" MoE router, the CPU reference (transformers' DeepseekV3 semantics).
#pragma once

#include <cstdint>

namespace k2::cpu {

struct MoeRouterArgs {
    const float* router_logits = nullptr;    // [num_tokens, num_experts] x @ W_gate^T in fp32
    const float* correction_bias = nullptr;  // [num_experts] e_score_correction_bias, used only to select; may be null
    int64_t num_tokens = 0;
    int64_t num_experts = 0;
    int64_t n_group = 1;
    int64_t topk_group = 1;
    int64_t top_k = 1;
    bool norm_topk_prob = true;
    float routed_scaling_factor = 1.0f;
    int32_t* topk_ids = nullptr;    // [num_tokens, top_k] out: selected experts
    float* topk_weights = nullptr;  // [num_tokens, top_k] out: their combine weights
};

// scores = sigmoid(logits); choice = scores + bias; group score = sum of the top-2 choices in each of n_group
// groups; choices outside the topk_group best groups are set to 0.0 (not -inf, as transformers does); the
// top_k choices are selected; weights = their un-biased scores, divided by (sum + 1e-20) when
// norm_topk_prob, times routed_scaling_factor.
void moe_route(const MoeRouterArgs& args);

}  // namespace k2::cpu

// Rotary position embedding on interleaved pairs (GPT-J style, as DeepSeek-V3 / Kimi-K2 checkpoints store
// q_pe / k_pe), and DeepSeek's YaRN frequency table.
#pragma once

#include <cstdint>
#include <vector>

namespace k2::cpu {

// YaRN parameters (HF rope_scaling); factor <= 1 or yarn == false gives plain RoPE.
struct YarnParams {
    bool yarn = false;
    double factor = 1.0;
    double beta_fast = 32.0;
    double beta_slow = 1.0;
    double mscale = 1.0;
    double mscale_all_dim = 0.0;
    int64_t original_max_position_embeddings = 4096;
};

// inv_freq [rope_dim / 2], computed in fp32 as transformers does: theta^(-2i/d), blended with
// theta^(-2i/d) / factor by YaRN's linear ramp between the correction dims of beta_fast and beta_slow.
std::vector<float> yarn_inv_freq(int64_t rope_dim, double theta, const YarnParams& params);

// cos/sin multiplier: yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim) (1 for K2).
float yarn_cos_sin_scale(const YarnParams& params);

// Rotates pairs (2i, 2i+1) of x[t, h, 0:rope_dim] by angle positions[t] * inv_freq[i], in place:
// out[2i] = x[2i] cos - x[2i+1] sin; out[2i+1] = x[2i] sin + x[2i+1] cos (cos, sin scaled by `scale`).
// Element (t, h, i) lives at x[t * token_stride + h * head_stride + i].
// positions: [num_tokens]; inv_freq: [rope_dim / 2].
void rope_interleaved(float* x, int64_t num_tokens, int64_t num_heads, int64_t rope_dim, int64_t token_stride,
                      int64_t head_stride, const int32_t* positions, const float* inv_freq, float scale = 1.0f);

}  // namespace k2::cpu

#include "backend/cpu/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace k2::cpu {

namespace {

double get_mscale(double scale, double mscale) {
    return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

// Dimension index whose wavelength makes `num_rotations` turns over the original context.
double correction_dim(double num_rotations, int64_t dim, double theta, int64_t max_pos) {
    return static_cast<double>(dim) *
           std::log(static_cast<double>(max_pos) / (num_rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(theta));
}

}  // namespace

std::vector<float> yarn_inv_freq(int64_t rope_dim, double theta, const YarnParams& params) {
    K2_CHECK(rope_dim > 0 && rope_dim % 2 == 0, "rope: rope_dim {} must be positive and even", rope_dim);
    const int64_t half = rope_dim / 2;
    std::vector<float> inv_freq(static_cast<size_t>(half));
    const auto base = static_cast<float>(theta);
    for (int64_t i = 0; i < half; ++i) {
        // fp32 like torch: base ** (arange(0, dim, 2).float() / dim)
        const float pos_freq = std::pow(base, static_cast<float>(2 * i) / static_cast<float>(rope_dim));
        inv_freq[static_cast<size_t>(i)] = 1.0f / pos_freq;
    }
    if (!params.yarn || params.factor <= 1.0) {
        return inv_freq;
    }
    const double low_d = correction_dim(params.beta_fast, rope_dim, theta, params.original_max_position_embeddings);
    const double high_d = correction_dim(params.beta_slow, rope_dim, theta, params.original_max_position_embeddings);
    const float low = static_cast<float>(std::max(std::floor(low_d), 0.0));
    float high = static_cast<float>(std::min(std::ceil(high_d), static_cast<double>(rope_dim - 1)));
    if (low == high) {
        high += 0.001f;
    }
    const auto factor = static_cast<float>(params.factor);
    for (int64_t i = 0; i < half; ++i) {
        const float extra = inv_freq[static_cast<size_t>(i)];
        const float pos_freq = std::pow(base, static_cast<float>(2 * i) / static_cast<float>(rope_dim));
        const float inter = 1.0f / (factor * pos_freq);
        const float ramp = std::clamp((static_cast<float>(i) - low) / (high - low), 0.0f, 1.0f);
        const float extrapolation = 1.0f - ramp;  // 1: keep the original frequency
        inv_freq[static_cast<size_t>(i)] = inter * (1.0f - extrapolation) + extra * extrapolation;
    }
    return inv_freq;
}

float yarn_cos_sin_scale(const YarnParams& params) {
    if (!params.yarn || params.factor <= 1.0 || params.mscale == 0.0 || params.mscale_all_dim == 0.0) {
        return 1.0f;
    }
    return static_cast<float>(get_mscale(params.factor, params.mscale) /
                              get_mscale(params.factor, params.mscale_all_dim));
}

void rope_interleaved(float* x, int64_t num_tokens, int64_t num_heads, int64_t rope_dim, int64_t token_stride,
                      int64_t head_stride, const int32_t* positions, const float* inv_freq, float scale) {
    const int64_t half = rope_dim / 2;
#pragma omp parallel for schedule(static) if (num_tokens * num_heads * rope_dim >= (int64_t{1} << 16))
    for (int64_t t = 0; t < num_tokens; ++t) {
        const auto pos = static_cast<float>(positions[t]);
        for (int64_t i = 0; i < half; ++i) {
            const float angle = pos * inv_freq[i];  // fp32 angle, as torch builds freqs
            const float c = std::cos(angle) * scale;
            const float s = std::sin(angle) * scale;
            for (int64_t h = 0; h < num_heads; ++h) {
                float* p = x + t * token_stride + h * head_stride + 2 * i;
                const float x0 = p[0];
                const float x1 = p[1];
                p[0] = x0 * c - x1 * s;
                p[1] = x0 * s + x1 * c;
            }
        }
    }
}

}  // namespace k2::cpu

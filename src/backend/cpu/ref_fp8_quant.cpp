#include "backend/cpu/ref_fp8_quant.h"

#include <algorithm>
#include <cmath>

#include "core/dtype.h"
#include "core/error.h"

namespace k2::cpu {

void quantize_fp8_groups(const float* x, int64_t num_tokens, int64_t width, uint8_t* q, float* scale,
                         int64_t scale_stride, int64_t group) {
    K2_CHECK(group > 0 && width % group == 0, "quantize_fp8_groups: width {} is not a multiple of {}", width, group);
    K2_CHECK(scale_stride >= num_tokens, "quantize_fp8_groups: scale_stride {} < num_tokens {}", scale_stride,
             num_tokens);
    for (int64_t t = 0; t < num_tokens; ++t) {
        for (int64_t g = 0; g < width / group; ++g) {
            const float* xg = x + t * width + g * group;
            float amax = 0.0f;
            for (int64_t i = 0; i < group; ++i) {
                amax = std::max(amax, std::fabs(xg[i]));
            }
            const float s = std::max(amax, 1e-10f) / kFp8E4M3Max;
            scale[g * scale_stride + t] = s;
            for (int64_t i = 0; i < group; ++i) {
                const float v = std::clamp(xg[i] / s, -kFp8E4M3Max, kFp8E4M3Max);
                q[t * width + g * group + i] = float_to_fp8_e4m3(v);
            }
        }
    }
}

void dequantize_fp8_groups(const uint8_t* q, const float* scale, int64_t num_tokens, int64_t width,
                           int64_t scale_stride, float* out, int64_t group) {
    for (int64_t t = 0; t < num_tokens; ++t) {
        for (int64_t i = 0; i < width; ++i) {
            out[t * width + i] = fp8_e4m3_to_float(q[t * width + i]) * scale[(i / group) * scale_stride + t];
        }
    }
}

}  // namespace k2::cpu

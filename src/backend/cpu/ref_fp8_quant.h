// Per-token 1x128-group FP8 (e4m3) activation quantization, the CPU reference of the CUDA quant kernels
// (vLLM's per_token_group_quant_fp8): s = max(amax, 1e-10) / 448, q = e4m3(clamp(x / s, -448, 448)).
#pragma once

#include <cstdint>

namespace k2::cpu {

// x: [num_tokens, width] fp32 (width a multiple of group); q: [num_tokens, width] e4m3 bytes;
// scale: [width / group, scale_stride] f32, token-contiguous (scale[g * scale_stride + t]).
void quantize_fp8_groups(const float* x, int64_t num_tokens, int64_t width, uint8_t* q, float* scale,
                         int64_t scale_stride, int64_t group = 128);

// The inverse: out[t, i] = e4m3(q[t, i]) * scale[i / group, t]; out: [num_tokens, width] fp32.
void dequantize_fp8_groups(const uint8_t* q, const float* scale, int64_t num_tokens, int64_t width,
                           int64_t scale_stride, float* out, int64_t group = 128);

}  // namespace k2::cpu

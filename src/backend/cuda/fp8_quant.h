// Per-token 1x128-group FP8 (e4m3) activation quantization, alone and fused into the ops that feed an FP8 GEMM.
// For every token and every group of 128 channels: s = max(amax, 1e-10) / 448, q = e4m3(clamp(x * (1 / s)))
// (vLLM's per_token_group_quant_fp8, with one reciprocal per group instead of a division per element). Scales are written token-contiguous, [hidden / 128, scale_stride], the layout of
// cuBLASLt's VEC128_32F / DeepGEMM's MN-major scales (scale_stride >= num_tokens; cuBLASLt needs == num_tokens).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace k2::cuda {

inline constexpr int kQuantGroup = 128;

struct RmsNormQuantParams {
    const uint16_t* x = nullptr;      // [num_tokens, hidden] bf16, row stride x_stride
    uint16_t* residual = nullptr;     // [num_tokens, hidden] bf16 or null; when set: residual += x, normalize that
    const uint16_t* weight = nullptr; // [hidden] bf16 RMSNorm gamma
    uint8_t* out = nullptr;           // [num_tokens, hidden] e4m3, row stride out_stride
    float* out_scale = nullptr;       // [hidden / 128, scale_stride] f32
    int64_t num_tokens = 0;
    int64_t hidden = 0;  // multiple of 128
    int64_t x_stride = 0;
    int64_t out_stride = 0;
    int64_t scale_stride = 0;
    float eps = 1e-6f;
    // Optional second output, for the MoE layer whose router reads the normed rows in bf16 while the experts read
    // them in FP8: when set, the rows of launch_rms_norm (bf16, rounded once) are written here too, and the codes are
    // the quantization of those bf16 values, so the pair equals launch_rms_norm then launch_fp8_quant bit for bit
    // (one kernel instead of two). May be x itself (same stride); must not alias residual.
    uint16_t* out_bf16 = nullptr;  // [num_tokens, hidden] bf16 or null, row stride out_bf16_stride
    int64_t out_bf16_stride = 0;
};

struct SiluMulQuantParams {
    const uint16_t* gate_up = nullptr;  // [num_tokens, 2 * inter] bf16: gate = [:, :inter], up = [:, inter:]
    uint8_t* out = nullptr;             // [num_tokens, inter] e4m3, row stride out_stride
    float* out_scale = nullptr;         // [inter / 128, scale_stride] f32
    int64_t num_tokens = 0;
    int64_t inter = 0;  // multiple of 128
    int64_t gate_up_stride = 0;
    int64_t out_stride = 0;
    int64_t scale_stride = 0;
};

// Plain quantization of bf16 activations (used where no norm or activation precedes the GEMM, e.g. o_proj).
struct Fp8QuantParams {
    const uint16_t* x = nullptr;  // [num_tokens, hidden] bf16
    uint8_t* out = nullptr;       // [num_tokens, hidden] e4m3
    float* out_scale = nullptr;   // [hidden / 128, scale_stride] f32
    int64_t num_tokens = 0;
    int64_t hidden = 0;  // multiple of 128
    int64_t x_stride = 0;
    int64_t out_stride = 0;
    int64_t scale_stride = 0;
};

void launch_rms_norm_quant(const RmsNormQuantParams& params, cudaStream_t stream);
void launch_silu_mul_quant(const SiluMulQuantParams& params, cudaStream_t stream);
void launch_fp8_quant(const Fp8QuantParams& params, cudaStream_t stream);

}  // namespace k2::cuda

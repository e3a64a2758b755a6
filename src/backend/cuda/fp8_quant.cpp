// Host launchers of fp8_quant.h: validate shapes and alignment, then launch (fp8_quant.cu).
#include "backend/cuda/fp8_quant.h"

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/launch_detail.h"

namespace k2::cuda {
namespace {

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

constexpr int64_t kMaxNormHidden = 65536;  // kernels::kNormMaxHidden (row_norm.cuh)

void check_quant_output(const uint8_t* out, const float* out_scale, int64_t num_tokens, int64_t width,
                        int64_t out_stride, int64_t scale_stride) {
    K2_CHECK(width > 0 && width % kQuantGroup == 0, "quantized width {} is not a multiple of {}", width, kQuantGroup);
    K2_CHECK(out_stride >= width && out_stride % 8 == 0, "bad e4m3 output stride {} for width {}", out_stride, width);
    K2_CHECK(scale_stride >= num_tokens, "scale stride {} < num_tokens {}", scale_stride, num_tokens);
    K2_CHECK(out != nullptr && out_scale != nullptr && reinterpret_cast<uintptr_t>(out) % 8 == 0,
             "quantized output must be non-null and 8-byte aligned");
}

}  // namespace

void launch_rms_norm_quant(const RmsNormQuantParams& p, cudaStream_t stream) {
    if (p.num_tokens == 0) {
        return;
    }
    check_quant_output(p.out, p.out_scale, p.num_tokens, p.hidden, p.out_stride, p.scale_stride);
    K2_CHECK(aligned16(p.x) && aligned16(p.weight) && p.x_stride % 8 == 0 && p.x_stride >= p.hidden,
             "rms_norm_quant: x/weight must be 16-byte aligned rows (x_stride {})", p.x_stride);
    K2_CHECK(p.residual == nullptr || aligned16(p.residual), "rms_norm_quant: residual must be 16-byte aligned");
    K2_CHECK(p.hidden <= kMaxNormHidden, "rms_norm_quant: hidden {} > {} (one row lives in one block's registers)",
             p.hidden, kMaxNormHidden);
    if (p.out_bf16 != nullptr) {
        K2_CHECK(aligned16(p.out_bf16) && p.out_bf16_stride % 8 == 0 && p.out_bf16_stride >= p.hidden,
                 "rms_norm_quant: out_bf16 must be 16-byte aligned rows (out_bf16_stride {})", p.out_bf16_stride);
        K2_CHECK(p.out_bf16 != p.x || p.out_bf16_stride == p.x_stride,
                 "rms_norm_quant: in place needs out_bf16_stride {} == x_stride {}", p.out_bf16_stride, p.x_stride);
        K2_CHECK(p.out_bf16 != p.residual, "rms_norm_quant: out_bf16 must not alias residual");
    }
    CUDA_CHECK(detail::launch_rms_norm_quant_kernel(p, stream));
}

void launch_silu_mul_quant(const SiluMulQuantParams& p, cudaStream_t stream) {
    if (p.num_tokens == 0) {
        return;
    }
    check_quant_output(p.out, p.out_scale, p.num_tokens, p.inter, p.out_stride, p.scale_stride);
    K2_CHECK(aligned16(p.gate_up) && p.gate_up_stride % 8 == 0 && p.gate_up_stride >= 2 * p.inter,
             "silu_mul_quant: gate_up must be 16-byte aligned rows (stride {})", p.gate_up_stride);
    CUDA_CHECK(detail::launch_silu_mul_quant_kernel(p, stream));
}

void launch_fp8_quant(const Fp8QuantParams& p, cudaStream_t stream) {
    if (p.num_tokens == 0) {
        return;
    }
    check_quant_output(p.out, p.out_scale, p.num_tokens, p.hidden, p.out_stride, p.scale_stride);
    K2_CHECK(aligned16(p.x) && p.x_stride % 8 == 0 && p.x_stride >= p.hidden,
             "fp8_quant: x must be 16-byte aligned rows (stride {})", p.x_stride);
    CUDA_CHECK(detail::launch_fp8_quant_kernel(p, stream));
}

}  // namespace k2::cuda

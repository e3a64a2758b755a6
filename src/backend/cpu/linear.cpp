#include "backend/cpu/linear.h"

#include <algorithm>
#include <bit>
#include <limits>
#include <vector>

namespace k2::cpu {

namespace {

// Below this many multiply-adds a parallel region costs more than it saves (decode-sized tiny matmuls).
constexpr int64_t kParallelMinWork = int64_t{1} << 18;

// e4m3fn -> fp32 with integer ops the compiler vectorizes: the 7 magnitude bits shifted into a float's
// exponent/mantissa fields give 2^(e-127) (1 + m/8) (a float denormal for e == 0), and x 2^120 rebiases
// exponent 7 to 127. S.1111.111 is NaN.
inline float fp8_e4m3_fast(uint8_t b) {
    const uint32_t mag = static_cast<uint32_t>(b & 0x7Fu);
    const uint32_t sign = static_cast<uint32_t>(b & 0x80u) << 24;
    const uint32_t bits = mag == 0x7Fu ? 0x7FC00000u : (mag << 20);
    return std::bit_cast<float>(bits | sign) * 0x1p120f;
}

// bf16 is the upper half of a float32.
inline float bf16_fast(uint16_t b) {
    return std::bit_cast<float>(static_cast<uint32_t>(b) << 16);
}

void check_weight(const Tensor& weight, const Tensor* scale_inv, int64_t k, int64_t block_n, int64_t block_k) {
    K2_CHECK(weight.rank() == 2 && weight.dim(1) == k, "linear: weight {} does not take inputs of width {}",
             weight.shape_string(), k);
    const DType dt = weight.dtype();
    K2_CHECK(dt == DType::F32 || dt == DType::BF16 || dt == DType::F16 || dt == DType::F8_E4M3,
             "linear: unsupported weight dtype {}", dtype_name(dt));
    if (dt != DType::F8_E4M3) {
        return;
    }
    K2_CHECK(scale_inv != nullptr && scale_inv->dtype() == DType::F32, "linear: FP8 weight {} needs an F32 scale",
             weight.shape_string());
    const int64_t n = weight.dim(0);
    const int64_t sn = (n + block_n - 1) / block_n;
    const int64_t sk = (k + block_k - 1) / block_k;
    K2_CHECK(scale_inv->rank() == 2 && scale_inv->dim(0) == sn && scale_inv->dim(1) == sk,
             "linear: scale {} does not match weight {} with {}x{} blocks (expected [{}, {}])",
             scale_inv->shape_string(), weight.shape_string(), block_n, block_k, sn, sk);
}

}  // namespace

void dequantize_row(const Tensor& weight, const Tensor* scale_inv, int64_t row, float* out, int64_t block_n,
                    int64_t block_k) {
    const int64_t k = weight.dim(1);
    switch (weight.dtype()) {
        case DType::F32: {
            const float* w = weight.data_as<float>() + row * k;
            std::copy(w, w + k, out);
            return;
        }
        case DType::BF16: {
            const uint16_t* w = weight.data_as<uint16_t>() + row * k;
#pragma omp simd
            for (int64_t j = 0; j < k; ++j)
                out[j] = bf16_fast(w[j]);
            return;
        }
        case DType::F16: {
            const uint16_t* w = weight.data_as<uint16_t>() + row * k;
            for (int64_t j = 0; j < k; ++j)
                out[j] = f16_to_float(w[j]);
            return;
        }
        case DType::F8_E4M3: {
            const uint8_t* w = weight.data_as<uint8_t>() + row * k;
            const int64_t sk = scale_inv->dim(1);
            const float* scales = scale_inv->data_as<float>() + (row / block_n) * sk;
            for (int64_t kb = 0; kb < sk; ++kb) {
                const float s = scales[kb];
                const int64_t end = std::min(k, (kb + 1) * block_k);
#pragma omp simd
                for (int64_t j = kb * block_k; j < end; ++j)
                    out[j] = fp8_e4m3_fast(w[j]) * s;
            }
            return;
        }
        default:
            K2_FAIL("linear: unsupported weight dtype {}", dtype_name(weight.dtype()));
    }
}

void linear(const float* x, int64_t m, int64_t k, const Tensor& weight, const Tensor* scale_inv, float* y,
            int64_t block_n, int64_t block_k) {
    check_weight(weight, scale_inv, k, block_n, block_k);
    const int64_t n = weight.dim(0);
    if (m == 0 || n == 0) {
        return;
    }
    // Four weight rows per task: each x row is read once per four outputs.
    constexpr int64_t kRows = 4;
    const int64_t num_tiles = (n + kRows - 1) / kRows;
#pragma omp parallel if (m * n * k >= kParallelMinWork)
    {
        std::vector<float> w(static_cast<size_t>(kRows * k));  // [kRows, k] dequantized weight rows
#pragma omp for schedule(static)
        for (int64_t tile = 0; tile < num_tiles; ++tile) {
            const int64_t r0 = tile * kRows;
            const int64_t rows = std::min(kRows, n - r0);
            for (int64_t r = 0; r < rows; ++r) {
                dequantize_row(weight, scale_inv, r0 + r, w.data() + r * k, block_n, block_k);
            }
            if (rows < kRows) {
                std::fill(w.begin() + rows * k, w.end(), 0.0f);  // a short last tile computes zeros
            }
            const float* w0 = w.data();
            const float* w1 = w0 + k;
            const float* w2 = w1 + k;
            const float* w3 = w2 + k;
            for (int64_t i = 0; i < m; ++i) {
                const float* xi = x + i * k;
                // Four independent accumulators: one dependency chain per weight row.
                float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
                for (int64_t j = 0; j < k; ++j) {
                    a0 += xi[j] * w0[j];
                    a1 += xi[j] * w1[j];
                    a2 += xi[j] * w2[j];
                    a3 += xi[j] * w3[j];
                }
                const float acc[kRows] = {a0, a1, a2, a3};
                for (int64_t r = 0; r < rows; ++r)
                    y[i * n + r0 + r] = acc[r];
            }
        }
    }
}

}  // namespace k2::cpu

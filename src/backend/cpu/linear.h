// Linear layer y = x @ W^T, the CPU reference: fp32 activations, fp32 accumulation. FP8 weights stay as
// stored (e.g. an mmap view of the checkpoint) and are dequantized inside the matmul, one weight row at a
// time, with their 128x128 block scales.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace k2::cpu {

// y[m, n] = sum_k x[m, k] * W[n, k].
// x: [m, k] fp32; y: [m, n] fp32 (overwritten); weight: [n, k] F32 / BF16 / F16 / F8_E4M3.
// For F8_E4M3, scale_inv: [ceil(n / block_n), ceil(k / block_k)] F32 and
// W[i, j] = fp8(Wq[i, j]) * scale_inv[i / block_n, j / block_k] (a multiplier despite the name; the last
// row/column blocks may be partial). scale_inv is ignored (may be null) for other dtypes.
void linear(const float* x, int64_t m, int64_t k, const Tensor& weight, const Tensor* scale_inv, float* y,
            int64_t block_n = 128, int64_t block_k = 128);

// Row `row` of W dequantized to fp32: out [k]. Same weight / scale rules as linear().
void dequantize_row(const Tensor& weight, const Tensor* scale_inv, int64_t row, float* out, int64_t block_n = 128,
                    int64_t block_k = 128);

}  // namespace k2::cpu

// RMSNorm, the CPU reference: statistics and output in fp32.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace k2::cpu {

// out[r, :] = weight * (x[r, :] / sqrt(mean(x[r, :]^2) + eps)) for r < rows.
// x: [rows, dim] with row stride x_stride; out: [rows, dim] with row stride out_stride (may alias x);
// weight: [dim] F32 / BF16 / F16.
void rms_norm(const float* x, int64_t rows, int64_t dim, int64_t x_stride, const Tensor& weight, float eps, float* out,
              int64_t out_stride);

// Contiguous rows: x and out [rows, dim].
inline void rms_norm(const float* x, int64_t rows, int64_t dim, const Tensor& weight, float eps, float* out) {
    rms_norm(x, rows, dim, dim, weight, eps, out, dim);
}

// A [n] F32 / BF16 / F16 tensor as floats (small vectors: norm weights, biases).
void to_float(const Tensor& t, float* out);

}  // namespace k2::cpu

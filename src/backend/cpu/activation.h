// Element-wise activations, the CPU reference.
#pragma once

#include <cstdint>

namespace k2::cpu {

// out[r, i] = silu(gate[r, i]) * up[r, i], silu(z) = z * sigmoid(z).
// gate, up: [rows, cols] with row stride in_stride (e.g. the two halves of a fused [rows, 2 * cols] gate_up);
// out: [rows, cols] contiguous (may alias gate when in_stride == cols).
void silu_mul(const float* gate, const float* up, int64_t rows, int64_t cols, int64_t in_stride, float* out);

inline void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
    silu_mul(gate, up, 1, n, n, out);
}

}  // namespace k2::cpu

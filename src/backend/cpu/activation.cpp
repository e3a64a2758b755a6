#include "backend/cpu/activation.h"

#include <cmath>

namespace k2::cpu {

void silu_mul(const float* gate, const float* up, int64_t rows, int64_t cols, int64_t in_stride, float* out) {
#pragma omp parallel for schedule(static) if (rows * cols > 16384)
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < cols; ++i) {
            const float g = gate[r * in_stride + i];
            out[r * cols + i] = g / (1.0f + std::exp(-g)) * up[r * in_stride + i];
        }
    }
}

}  // namespace k2::cpu

#include "backend/cpu/norm.h"

#include <cmath>
#include <vector>

namespace k2::cpu {

void to_float(const Tensor& t, float* out) {
    const int64_t n = t.numel();
    switch (t.dtype()) {
        case DType::F32:
            for (int64_t i = 0; i < n; ++i)
                out[i] = t.data_as<float>()[i];
            break;
        case DType::BF16:
            for (int64_t i = 0; i < n; ++i)
                out[i] = bf16_to_float(t.data_as<uint16_t>()[i]);
            break;
        case DType::F16:
            for (int64_t i = 0; i < n; ++i)
                out[i] = f16_to_float(t.data_as<uint16_t>()[i]);
            break;
        default:
            K2_FAIL("to_float: unsupported dtype {} for a {} tensor", dtype_name(t.dtype()), t.shape_string());
    }
}

void rms_norm(const float* x, int64_t rows, int64_t dim, int64_t x_stride, const Tensor& weight, float eps, float* out,
              int64_t out_stride) {
    K2_CHECK(weight.numel() == dim, "rms_norm: weight {} does not match dim {}", weight.shape_string(), dim);
    std::vector<float> w(static_cast<size_t>(dim));
    to_float(weight, w.data());
#pragma omp parallel for schedule(static) if (rows * dim >= (int64_t{1} << 16))
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * x_stride;
        float* yr = out + r * out_stride;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < dim; ++i)
            sum += xr[i] * xr[i];
        const float inv = 1.0f / std::sqrt(sum / static_cast<float>(dim) + eps);
        for (int64_t i = 0; i < dim; ++i)
            yr[i] = w[static_cast<size_t>(i)] * (xr[i] * inv);
    }
}

}  // namespace k2::cpu

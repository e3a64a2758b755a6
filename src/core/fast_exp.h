// exp(x) for x <= 0 without a libm call, shared by the host sampler (where a loop of it vectorizes) and the CUDA
// sampling kernel (which must weigh every token exactly as the host does, so that a draw with the same uniform picks
// the same token): 2^(x log2 e) = 2^n 2^f with f in [0, 1) by a degree-6 polynomial (relative error ~1e-7, the float
// rounding); inputs below 2^-126 clamp there (a weight of ~1e-38 next to the maximum's 1). libm's expf element by
// element made a 163,840-token row cost ~1 ms on the host.
#pragma once

#include <cfloat>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define K2_HOST_DEVICE __host__ __device__
#else
#define K2_HOST_DEVICE
#endif

namespace k2 {

// NOTE: nvcc contracts a * b + c into one FMA (one rounding), the host compiler for plain x86-64 does not: on the
// device every step is an explicitly rounded multiply or add, so both sides compute the same bits.
K2_HOST_DEVICE inline float fexp_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

K2_HOST_DEVICE inline float fexp_add(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

K2_HOST_DEVICE inline float exp_nonpositive(float x) {
    const float scaled = fexp_mul(x, 1.44269504088896341f);
    const float y = scaled > -126.0f ? scaled : -126.0f;  // NaN maps to -126 too
    const auto truncated = static_cast<int32_t>(y);       // toward zero; floor for y < 0 is one less when not whole
    const int32_t n = truncated - (y < static_cast<float>(truncated) ? 1 : 0);
    const float f = fexp_add(y, -static_cast<float>(n));
    float p = 2.154066972433887e-4f;
    p = fexp_add(fexp_mul(p, f), 1.2482840040795938e-3f);
    p = fexp_add(fexp_mul(p, f), 9.67454989150724e-3f);
    p = fexp_add(fexp_mul(p, f), 5.548532072372258e-2f);
    p = fexp_add(fexp_mul(p, f), 2.4022940052086272e-1f);
    p = fexp_add(fexp_mul(p, f), 6.931470281767104e-1f);
    p = fexp_add(fexp_mul(p, f), 1.0f);
    const int32_t bits = (n + 127) << 23;
    float two_n;
    std::memcpy(&two_n, &bits, sizeof(two_n));
    return fexp_mul(p, two_n);
}

// The weight of one logit in a temperature draw: exp((logit - max_logit) / T) with inv_temperature = float(1 / T);
// a masked (-inf) logit weighs 0.
K2_HOST_DEVICE inline float draw_weight(float logit, float max_logit, float inv_temperature) {
    const float w = exp_nonpositive(fexp_mul(fexp_add(logit, -max_logit), inv_temperature));
    return logit < -FLT_MAX ? 0.0f : w;  // only -inf is below the lowest finite float
}

}  // namespace k2

// Shared helpers of the op test driver (test_backend_ops.cpp) and its --perf mode (ops_perf.cpp).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "backend/cuda/device_buffer.h"
#include "backend/cuda/fp8_gemm.h"
#include "core/dtype.h"

namespace k2::ops_test {

// bf16 bits of N(0, sigma) samples.
inline std::vector<uint16_t> random_bf16(size_t count, std::mt19937& rng, float sigma = 1.0f) {
    std::normal_distribution<float> dist(0.0f, sigma);
    std::vector<uint16_t> out(count);
    for (auto& v : out)
        v = float_to_bf16(dist(rng));
    return out;
}

inline std::vector<float> bf16_to_floats(const std::vector<uint16_t>& bits) {
    std::vector<float> out(bits.size());
    for (size_t i = 0; i < bits.size(); ++i)
        out[i] = bf16_to_float(bits[i]);
    return out;
}

// e4m3 bytes of N(0, sigma) samples (never NaN: the cast saturates).
inline std::vector<uint8_t> random_fp8(size_t count, std::mt19937& rng, float sigma = 64.0f) {
    std::normal_distribution<float> dist(0.0f, sigma);
    std::vector<uint8_t> out(count);
    for (auto& v : out)
        v = float_to_fp8_e4m3(dist(rng));
    return out;
}

inline std::vector<float> random_uniform(size_t count, std::mt19937& rng, float lo, float hi) {
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> out(count);
    for (auto& v : out)
        v = dist(rng);
    return out;
}

template <typename T>
cuda::DeviceBuffer to_device(const std::vector<T>& host) {
    cuda::DeviceBuffer buf(host.size() * sizeof(T));
    if (!host.empty())
        buf.upload(host.data(), host.size() * sizeof(T));
    return buf;
}

template <typename T>
std::vector<T> to_host(const cuda::DeviceBuffer& buf, size_t count) {
    std::vector<T> host(count);
    if (count > 0)
        buf.download(host.data(), count * sizeof(T));
    return host;
}

// ||a - b|| / ||b||; NaN anywhere in a gives NaN (which fails every "<" check).
inline double rel_l2(const float* a, const float* b, size_t count) {
    double num = 0.0;
    double den = 0.0;
    for (size_t i = 0; i < count; ++i) {
        const double d = static_cast<double>(a[i]) - b[i];
        num += d * d;
        den += static_cast<double>(b[i]) * b[i];
    }
    return std::sqrt(num / std::max(den, 1e-30));
}

inline double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
    return rel_l2(a.data(), b.data(), a.size());
}

inline double relative_l2(const std::vector<float>& a, const std::vector<float>& b) {
    return rel_l2(a, b);
}

// The activations of a GEMM benchmark row and the params over them (weights left to the caller): m rows padded to
// 16 (cuBLASLt's fallback shape when it rejects m itself), scales in [0.01, 0.02]. fp8(count) draws the e4m3 bytes.
struct PerfGemmInputs {
    cuda::DeviceBuffer x;   // [m_pad, k] e4m3
    cuda::DeviceBuffer xs;  // [k / 128, m_pad] f32
    cuda::DeviceBuffer y;   // [m_pad, n] bf16
    cuda::Fp8GemmParams params;
};

inline PerfGemmInputs perf_gemm_inputs(int64_t m, int64_t n, int64_t k,
                                       const std::function<std::vector<uint8_t>(size_t)>& fp8, std::mt19937& rng) {
    const int64_t m_pad = (m + 15) / 16 * 16;
    PerfGemmInputs in;
    in.x = to_device(fp8(static_cast<size_t>(m_pad * k)));
    in.xs = to_device(random_uniform(static_cast<size_t>(k / 128 * m_pad), rng, 0.01f, 0.02f));
    in.y = cuda::DeviceBuffer(static_cast<size_t>(m_pad * n) * 2);
    cuda::Fp8GemmParams& p = in.params;
    p.x = in.x.as<uint8_t>();
    p.x_scale = in.xs.as<float>();
    p.y = in.y.as<uint16_t>();
    p.num_tokens = m;
    p.n = n;
    p.k = k;
    p.x_stride = k;
    p.x_scale_stride = m;
    p.y_stride = n;
    return in;
}

// Median time in microseconds of one call of `body(iter, stream)`, measured over CUDA-graph replays of
// kCallsPerGraph consecutive calls (iter counts calls, so the body can rotate input buffers).
double time_us(const std::function<void(int, cudaStream_t)>& body, cudaStream_t stream);

// The copy rate of our SM copy kernel over 1 GiB (bytes read + written per second, in GB/s), timed by time_us: the
// baseline every op benchmark states its "% of copy" against.
double copy_rate_gbs(cudaStream_t stream);

// The perf mode of the driver; returns the process exit code.
int run_perf(int argc, char** argv);

}  // namespace k2::ops_test

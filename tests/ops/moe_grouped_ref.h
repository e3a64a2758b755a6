// Problem setup and host reference of the grouped FP8 expert GEMM tests (moe_ops.h's Fp8GroupedGemmParams): one
// routed problem from per-expert row counts, quantized per expert into the expert-blocked scale layout, against
// cpu::linear per expert (FP8 weights with 128x128 block scales) over the dequantized rows. Header-only, shared by
// test_moe_gemm_wgmma.cpp (moved here from it), test_moe_prefill_gemm.cpp and test_moe_ops.cpp (which builds its
// grouped problems from routed token ids instead, through its host permute).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/linear.h"
#include "backend/cpu/ref_fp8_quant.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/fp8_gemm.h"
#include "backend/cuda/moe_ops.h"
#include "core/tensor.h"
#include "ops_common.h"

namespace k2::ops_test::moe_ref {

using ops_test::rel_l2;

inline uint64_t seed64(std::mt19937& rng) {
    return (static_cast<uint64_t>(rng()) << 32) | rng();
}

// Random e4m3 bytes with the top exponent bit clear (|v| < 2, never NaN), from splitmix64: fast enough for 29 MB
// Kimi-K2 expert matrices, where std::normal_distribution would take seconds per expert.
inline void fill_fast_fp8(uint8_t* out, size_t count, uint64_t seed) {
    uint64_t state = seed;
    for (size_t i = 0; i < count; i += 8) {
        state += 0x9E3779B97F4A7C15ull;
        uint64_t z = state;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z = (z ^ (z >> 31)) & 0xBFBFBFBFBFBFBFBFull;
        std::memcpy(out + i, &z, std::min<size_t>(8, count - i));
    }
}

inline void fill_fast_fp8(std::vector<uint8_t>& out, uint64_t seed) {
    fill_fast_fp8(out.data(), out.size(), seed);
}

// Rows per expert of a router-like choice: top_k distinct experts per token from a pool of pool_size (0: all).
inline std::vector<int> routed_rows(int64_t num_tokens, int top_k, int num_experts, std::mt19937& rng,
                                    int pool_size = 0) {
    std::vector<int> all(static_cast<size_t>(num_experts));
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int> pool(all.begin(), all.begin() + (pool_size > 0 ? pool_size : num_experts));
    std::vector<int> rows(static_cast<size_t>(num_experts), 0);
    for (int64_t t = 0; t < num_tokens; ++t) {
        for (int j = 0; j < top_k; ++j) {
            std::uniform_int_distribution<size_t> pick(static_cast<size_t>(j), pool.size() - 1);
            std::swap(pool[static_cast<size_t>(j)], pool[pick(rng)]);
            ++rows[static_cast<size_t>(pool[static_cast<size_t>(j)])];
        }
    }
    return rows;
}

// One grouped problem from per-expert row counts (the GEMM does not care which token a row came from). Expert e's
// rows are quantized together into its expert-blocked scale block [k / 128, rows_e] at offsets[e] * k / 128; only
// the experts with rows get weights, the others stay 0xFF (e4m3 NaN: reading one would show).
struct Problem {
    int num_experts = 0;
    int64_t n = 0;
    int64_t k = 0;
    std::vector<int32_t> offsets;  // [num_experts + 1]
    std::vector<float> y_ref;      // [P, n]
    cuda::DeviceBuffer x;          // [P + x_slack_rows, k] e4m3 (slack rows 0xFF: e4m3 NaN)
    cuda::DeviceBuffer x_scale;    // [P * k / 128] f32, expert-blocked
    cuda::DeviceBuffer w;          // [num_experts, n, k] e4m3
    cuda::DeviceBuffer w_scale;    // [num_experts, n / 128, k / 128] f32
    cuda::DeviceBuffer offsets_d;  // [num_experts + 1]
    cuda::DeviceBuffer y;          // [P + 1, n] bf16: one row past the end for the poison check
    int64_t num_rows() const { return offsets.back(); }
};

inline Problem make_problem(const std::vector<int>& rows_per_expert, int64_t n, int64_t k, std::mt19937& rng,
                            int64_t x_slack_rows) {
    Problem g;
    g.num_experts = static_cast<int>(rows_per_expert.size());
    g.n = n;
    g.k = k;
    g.offsets.assign(rows_per_expert.size() + 1, 0);
    std::partial_sum(rows_per_expert.begin(), rows_per_expert.end(), g.offsets.begin() + 1);
    const int64_t num_rows = g.num_rows();
    const int64_t num_kb = k / 128;
    const int64_t sn = n / 128;
    std::vector<uint8_t> xq(static_cast<size_t>(std::max<int64_t>(1, num_rows + x_slack_rows) * k), 0xFF);
    std::vector<float> xs(static_cast<size_t>(std::max<int64_t>(1, num_rows * num_kb)));
    auto ws = random_uniform(static_cast<size_t>(g.num_experts * sn * num_kb), rng, 1e-4f, 4e-4f);
    g.w = cuda::DeviceBuffer(static_cast<size_t>(g.num_experts * n * k));
    g.w.fill_bytes(0xFF);
    g.y_ref.assign(static_cast<size_t>(num_rows * n), 0.0f);
    std::vector<uint8_t> w_e(static_cast<size_t>(n * k));  // [n, k] one expert at a time
    for (int e = 0; e < g.num_experts; ++e) {
        const int64_t begin = g.offsets[static_cast<size_t>(e)];
        const int64_t rows = g.offsets[static_cast<size_t>(e + 1)] - begin;
        if (rows == 0)
            continue;
        const auto x = bf16_to_floats(random_bf16(static_cast<size_t>(rows * k), rng));  // [rows, k]
        uint8_t* xq_e = xq.data() + begin * k;
        float* xs_e = xs.data() + begin * num_kb;  // [k / 128, rows]
        cpu::quantize_fp8_groups(x.data(), rows, k, xq_e, xs_e, rows);
        std::vector<float> x_deq(x.size());
        cpu::dequantize_fp8_groups(xq_e, xs_e, rows, k, rows, x_deq.data());
        fill_fast_fp8(w_e, seed64(rng));
        g.w.upload(w_e.data(), w_e.size(), static_cast<size_t>(e * n * k));
        const Tensor w_tensor = Tensor::view(DType::F8_E4M3, {n, k}, w_e.data());
        const Tensor s_tensor = Tensor::view(DType::F32, {sn, num_kb}, ws.data() + e * sn * num_kb);
        cpu::linear(x_deq.data(), rows, k, w_tensor, &s_tensor, g.y_ref.data() + begin * n);
    }
    g.x = to_device(xq);
    g.x_scale = to_device(xs);
    g.w_scale = to_device(ws);
    g.offsets_d = to_device(g.offsets);
    g.y = cuda::DeviceBuffer(static_cast<size_t>((num_rows + 1) * n) * 2);
    return g;
}

// The launch parameters of any grouped problem with x, x_scale, w, w_scale, y (device buffers), num_experts, n, k.
template <typename P>
cuda::Fp8GroupedGemmParams params_of(const P& g, const cuda::DeviceBuffer& offsets, int64_t max_rows_per_expert) {
    cuda::Fp8GroupedGemmParams p;
    p.x = g.x.template as<uint8_t>();
    p.x_scale = g.x_scale.template as<float>();
    p.w = g.w.template as<uint8_t>();
    p.w_scale = g.w_scale.template as<float>();
    p.y = g.y.template as<uint16_t>();
    p.offsets = offsets.as<int32_t>();
    p.num_experts = g.num_experts;
    p.n = g.n;
    p.k = g.k;
    p.max_rows_per_expert = max_rows_per_expert;
    return p;
}

inline cuda::Fp8GroupedGemmParams params_of(const Problem& g, int64_t max_rows_per_expert) {
    return params_of(g, g.offsets_d, max_rows_per_expert);
}

// Relative L2 < 1e-2 per expert and overall (as test_moe_ops.cpp's grouped GEMM): bf16 output rounding gives
// ~2e-3 and fp32 accumulation-order differences are far below, while a wrong scale, row, pass, tile or expert lands
// near 1 for the expert it hits. Every value of rows < P must be finite (unwritten poison is NaN; so are untouched
// weights and x's slack rows), and the row past P must still be poisoned. Returns y's bits. For any grouped
// problem with y (device, [P + 1, n]), y_ref [P, n], num_experts, n and num_rows(); offsets [num_experts + 1] host.
template <typename P>
std::vector<uint16_t> expect_matches(const P& g, const std::vector<int32_t>& offsets, const std::string& what) {
    SCOPED_TRACE(what);
    const int64_t num_rows = g.num_rows();
    const auto y = to_host<uint16_t>(g.y, static_cast<size_t>((num_rows + 1) * g.n));
    std::vector<float> y_gpu(g.y_ref.size());
    int64_t non_finite = 0;
    for (size_t i = 0; i < y_gpu.size(); ++i) {
        y_gpu[i] = bf16_to_float(y[i]);
        non_finite += std::isfinite(y_gpu[i]) ? 0 : 1;
    }
    EXPECT_EQ(non_finite, 0) << "NaN/Inf (or unwritten poison) in y";
    for (int e = 0; e < g.num_experts; ++e) {
        const int64_t begin = offsets[static_cast<size_t>(e)];
        const int64_t rows = offsets[static_cast<size_t>(e + 1)] - begin;
        if (rows == 0)
            continue;
        const size_t at = static_cast<size_t>(begin * g.n);
        EXPECT_LT(rel_l2(y_gpu.data() + at, g.y_ref.data() + at, static_cast<size_t>(rows * g.n)), 1e-2)
            << "expert " << e << " (" << rows << " rows)";
    }
    if (!y_gpu.empty()) {
        EXPECT_LT(rel_l2(y_gpu.data(), g.y_ref.data(), y_gpu.size()), 1e-2);
    }
    for (size_t i = y_gpu.size(); i < y.size(); ++i) {
        EXPECT_EQ(y[i], 0xFFFF) << "y written past row P at " << i;
        if (y[i] != 0xFFFF)
            break;
    }
    return y;
}

inline std::vector<uint16_t> expect_matches(const Problem& g, const std::string& what) {
    return expect_matches(g, g.offsets, what);
}

// Valid parameters over small static host buffers, for the validation tests (which must throw before any CUDA call
// reads them): 4 experts of n = k = 256 and the given bound.
inline cuda::Fp8GroupedGemmParams validation_params(int64_t max_rows_per_expert) {
    alignas(16) static uint8_t bytes[64];
    alignas(16) static float floats[16];
    alignas(16) static uint16_t out[16];
    alignas(16) static int32_t offsets[600];
    cuda::Fp8GroupedGemmParams good;
    good.x = bytes;
    good.x_scale = floats;
    good.w = bytes;
    good.w_scale = floats;
    good.y = out;
    good.offsets = offsets;
    good.num_experts = 4;
    good.n = 256;
    good.k = 256;
    good.max_rows_per_expert = max_rows_per_expert;
    return good;
}

// 16 experts of n = k = 256 without a single row (device offsets all 0) and a poisoned one-row y, which a launch
// with any bound must leave untouched.
struct EmptyProblem {
    static constexpr int kExperts = 16;
    cuda::DeviceBuffer offsets = to_device(std::vector<int32_t>(kExperts + 1, 0));
    cuda::DeviceBuffer x{256};
    cuda::DeviceBuffer x_scale{256};
    cuda::DeviceBuffer w{static_cast<size_t>(kExperts) * 256 * 256};
    cuda::DeviceBuffer w_scale{static_cast<size_t>(kExperts) * 4 * 4};
    cuda::DeviceBuffer y{256 * 2};  // [1, 256] bf16

    EmptyProblem() { y.fill_bytes(0xFF); }
    cuda::Fp8GroupedGemmParams params(int64_t max_rows_per_expert) const {
        cuda::Fp8GroupedGemmParams p;
        p.x = x.as<uint8_t>();
        p.x_scale = x_scale.as<float>();
        p.w = w.as<uint8_t>();
        p.w_scale = w_scale.as<float>();
        p.y = y.as<uint16_t>();
        p.offsets = offsets.as<int32_t>();
        p.num_experts = kExperts;
        p.n = 256;
        p.k = 256;
        p.max_rows_per_expert = max_rows_per_expert;
        return p;
    }
};

// Benchmark weights of 384 Kimi-K2-sized experts [384, n, k] e4m3: a 32 MB random pattern (pattern_d, from
// fill_fast_fp8) repeated on the device, since filling GBs on the host would take minutes.
inline cuda::DeviceBuffer repeated_weights(const cuda::DeviceBuffer& pattern_d, size_t pattern_bytes, int num_experts,
                                           int64_t n, int64_t k) {
    const size_t w_bytes = static_cast<size_t>(num_experts) * static_cast<size_t>(n * k);
    cuda::DeviceBuffer w(w_bytes);
    for (size_t at = 0; at < w_bytes; at += pattern_bytes) {
        CUDA_CHECK(cudaMemcpy(static_cast<uint8_t*>(w.data()) + at, pattern_d.data(),
                              std::min(pattern_bytes, w_bytes - at), cudaMemcpyDeviceToDevice));
    }
    return w;
}

// The lanes of run_fp8_grouped_gemm_prefill_lanes (moe_ops.h: per-expert cuBLASLt calls on num_lanes streams, the
// model's prefill form before the wgmma grouped GEMM) with their scratch, for experts of up to max_rows rows.
struct Lanes {
    std::vector<std::unique_ptr<cuda::Fp8GemmRunner>> runners;
    std::vector<cuda::Fp8PrefillLane> lanes;
    cuda::DeviceBuffer scales;
    cuda::DeviceBuffer y_scratch;
    cudaEvent_t fork = nullptr;

    Lanes(int num_lanes, int64_t n, int64_t k, int64_t max_rows) {
        const int64_t scale_floats = std::max(n, k) / 128 * (max_rows + 16);
        const int64_t scratch = (max_rows + 16) * n;
        scales = cuda::DeviceBuffer(static_cast<size_t>(num_lanes * scale_floats) * 4);
        y_scratch = cuda::DeviceBuffer(static_cast<size_t>(num_lanes * scratch) * 2);
        for (int j = 0; j < num_lanes; ++j) {
            runners.push_back(std::make_unique<cuda::Fp8GemmRunner>());
            cuda::Fp8PrefillLane lane;
            lane.runner = runners.back().get();
            CUDA_CHECK(cudaStreamCreateWithFlags(&lane.stream, cudaStreamNonBlocking));
            CUDA_CHECK(cudaEventCreateWithFlags(&lane.done, cudaEventDisableTiming));
            lane.padded_scales = scales.as<float>() + j * scale_floats;
            lane.y_scratch = y_scratch.as<uint16_t>() + j * scratch;
            lanes.push_back(lane);
        }
        CUDA_CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
    }
    ~Lanes() {
        for (const cuda::Fp8PrefillLane& lane : lanes) {
            cudaStreamDestroy(lane.stream);
            cudaEventDestroy(lane.done);
        }
        cudaEventDestroy(fork);
    }
    Lanes(const Lanes&) = delete;
    Lanes& operator=(const Lanes&) = delete;
};

}  // namespace k2::ops_test::moe_ref

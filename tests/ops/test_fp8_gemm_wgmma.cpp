// Tests of the TMA + wgmma decode GEMM (fp8_gemm_wgmma.h) against the CPU reference cpu::linear with FP8 block
// dequantization, at every Kimi-K2 projection shape and edge sizes, NaN-poisoned outputs and padding. Without a GPU
// every test skips with the reason. Benchmark mode (cuBLASLt in the same run):
// `test_fp8_gemm_wgmma --gtest_also_run_disabled_tests --gtest_filter='*Perf*'`.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>

#include "backend/cpu/linear.h"
#include "backend/cpu/ref_fp8_quant.h"
#include "backend/cuda/device_copy.h"
#include "backend/cuda/fp8_gemm.h"
#include "backend/cuda/fp8_gemm_wgmma.h"
#include "core/tensor.h"
#include "ops_common.h"

namespace k2::ops_test {
namespace {

class Fp8GemmWgmma : public ::testing::Test {
protected:
    void SetUp() override {
        if (cuda::cuda_device_count() == 0) {
            GTEST_SKIP() << "no CUDA device: the wgmma FP8 GEMM tests need an sm_90a GPU";
        }
    }
};

// e4m3 codes of N(0, 64) samples, fast enough for 132 M weights: a table of 64 Ki normal samples indexed by
// xorshift bits (the weights only need to be varied, never NaN and never zero-heavy).
std::vector<uint8_t> fast_normal_fp8(size_t count, std::mt19937& rng) {
    const std::vector<uint8_t> table = random_fp8(65536, rng);
    std::vector<uint8_t> out(count);
    uint64_t state = (static_cast<uint64_t>(rng()) << 32) | rng() | 1;
    for (auto& v : out) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        v = table[static_cast<size_t>(state >> 48)];
    }
    return out;
}

struct GemmShape {
    const char* name;
    int64_t n;
    int64_t k;
};

// The Kimi-K2 projections (docs/perf/kernels.md).
constexpr GemmShape kKimiShapes[] = {
    {"q_a+kv_a", 2112, 7168},       {"q_b", 12288, 1536},        {"o_proj", 7168, 8192},
    {"dense_gate_up", 18432, 7168}, {"dense_down", 7168, 18432}, {"expert_gate_up", 4096, 7168},
    {"expert_down", 7168, 2048},    {"kv_b", 16384, 512},
};

// One weight and 128 quantized tokens with the CPU reference of all 128 rows; a case of m tokens uses the first m
// rows (each output row depends on its own token only), with x_scale_stride 128 >= m.
struct Problem {
    int64_t n = 0;
    int64_t k = 0;
    std::vector<uint8_t> xq;   // [128, k] e4m3
    std::vector<float> xs;     // [k / 128, 128] f32
    std::vector<float> y_ref;  // [128, n]
    cuda::DeviceBuffer xq_dev, xs_dev, w_dev, ws_dev;
};

constexpr int64_t kRows = 128;

Problem make_problem(int64_t n, int64_t k, std::mt19937& rng) {
    Problem pr;
    pr.n = n;
    pr.k = k;
    const int64_t num_kb = k / 128;
    const int64_t sn = (n + 127) / 128;
    const auto x = bf16_to_floats(random_bf16(static_cast<size_t>(kRows * k), rng, 1.0f));
    pr.xq.resize(x.size());
    pr.xs.resize(static_cast<size_t>(num_kb * kRows));
    cpu::quantize_fp8_groups(x.data(), kRows, k, pr.xq.data(), pr.xs.data(), kRows);
    std::vector<float> x_deq(x.size());
    cpu::dequantize_fp8_groups(pr.xq.data(), pr.xs.data(), kRows, k, kRows, x_deq.data());
    auto w = fast_normal_fp8(static_cast<size_t>(n * k), rng);
    const auto ws = random_uniform(static_cast<size_t>(sn * num_kb), rng, 1e-4f, 4e-4f);
    pr.y_ref.resize(static_cast<size_t>(kRows * n));
    Tensor w_tensor = Tensor::view(DType::F8_E4M3, {n, k}, w.data());
    Tensor s_tensor = Tensor::view(DType::F32, {sn, num_kb}, const_cast<float*>(ws.data()));
    cpu::linear(x_deq.data(), kRows, k, w_tensor, &s_tensor, pr.y_ref.data());
    pr.xq_dev = to_device(pr.xq);
    pr.xs_dev = to_device(pr.xs);
    pr.w_dev = to_device(w);
    pr.ws_dev = to_device(ws);
    return pr;
}

cuda::Fp8GemmParams make_params(const Problem& pr, int64_t m, int64_t y_stride, const cuda::DeviceBuffer& y) {
    cuda::Fp8GemmParams p;
    p.x = pr.xq_dev.as<uint8_t>();
    p.x_scale = pr.xs_dev.as<float>();
    p.w = pr.w_dev.as<uint8_t>();
    p.w_scale = pr.ws_dev.as<float>();
    p.y = y.as<uint16_t>();
    p.num_tokens = m;
    p.n = pr.n;
    p.k = pr.k;
    p.x_stride = pr.k;
    p.x_scale_stride = kRows;
    p.y_stride = y_stride;
    return p;
}

// Runs m tokens into a NaN-poisoned y of 128 rows x (n + 24); checks the first m rows against the reference and
// that the padding columns and rows m..127 are untouched.
void check_case(const Problem& pr, int64_t m, const cuda::Fp8GemmWgmmaOptions& options = {}) {
    SCOPED_TRACE(fmt::format("m {} n {} k {} splits {} rows {}", m, pr.n, pr.k, options.splits, options.rows));
    const int64_t y_stride = pr.n + 24;
    cuda::DeviceBuffer y_dev(static_cast<size_t>(kRows * y_stride) * 2);
    y_dev.fill_bytes(0xFF);
    cuda::launch_fp8_gemm_wgmma(make_params(pr, m, y_stride, y_dev), nullptr, options);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto y = to_host<uint16_t>(y_dev, static_cast<size_t>(kRows * y_stride));
    std::vector<float> y_gpu(static_cast<size_t>(m * pr.n));
    int64_t bad_padding = 0;
    for (int64_t t = 0; t < kRows; ++t) {
        for (int64_t j = 0; j < y_stride; ++j) {
            const uint16_t v = y[static_cast<size_t>(t * y_stride + j)];
            if (t < m && j < pr.n) {
                y_gpu[static_cast<size_t>(t * pr.n + j)] = bf16_to_float(v);
            } else if (v != 0xFFFF) {
                ++bad_padding;
            }
        }
    }
    EXPECT_EQ(bad_padding, 0) << "padding columns or rows >= m were written";
    // Same bound as the existing fp8 GEMM test: bf16 output rounding alone gives ~2e-3; the reference and the
    // kernel sum the same exact fp8 products in different orders (fp32), far below that.
    EXPECT_LT(rel_l2(y_gpu.data(), pr.y_ref.data(), y_gpu.size()), 5e-3);
}

TEST_F(Fp8GemmWgmma, EdgeSizes) {
    std::mt19937 rng(11);
    // Partial 128-row tiles (n 198: not even a multiple of 4), one k block, k blocks not dividing the splits.
    for (const auto& [n, k] : {std::pair<int64_t, int64_t>{256, 512}, {198, 128}, {384, 1280}}) {
        const Problem pr = make_problem(n, k, rng);
        for (const int rows : {128, 64}) {  // both CTA shapes, forced
            for (const int64_t m : {1, 3, 16, 17, 33, 64, 65, 100, 128}) {
                check_case(pr, m, {0, rows});
            }
            for (const int splits : {1, 2, 3, 8}) {  // every reduction width, forced
                check_case(pr, 17, {splits, rows});
                check_case(pr, 128, {splits, rows});
            }
        }
    }
}

TEST_F(Fp8GemmWgmma, EmptyIsNoOpAndLargeBatchRefused) {
    std::mt19937 rng(12);
    const Problem pr = make_problem(256, 512, rng);
    cuda::DeviceBuffer y_dev(static_cast<size_t>(256) * 2);
    y_dev.fill_bytes(0xFF);
    cuda::Fp8GemmParams p = make_params(pr, 0, 256, y_dev);
    cuda::launch_fp8_gemm_wgmma(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto y = to_host<uint16_t>(y_dev, 256);
    EXPECT_TRUE(std::all_of(y.begin(), y.end(), [](uint16_t v) { return v == 0xFFFF; }));
    p.num_tokens = 129;
    p.x_scale_stride = 129;
    EXPECT_THROW(cuda::launch_fp8_gemm_wgmma(p, nullptr), Error);
    p.num_tokens = 16;
    p.k = 500;
    EXPECT_THROW(cuda::launch_fp8_gemm_wgmma(p, nullptr), Error);
}

TEST_F(Fp8GemmWgmma, KimiShapes) {
    std::mt19937 rng(13);
    for (const auto& shape : kKimiShapes) {
        SCOPED_TRACE(shape.name);
        const Problem pr = make_problem(shape.n, shape.k, rng);
        for (const int64_t m : {1, 3, 16, 17, 64, 100, 128}) {
            check_case(pr, m);
        }
        check_case(pr, 33, {0, 64});  // both CTA shapes at every Kimi-K2 size
        check_case(pr, 33, {0, 128});
    }
}

// Same inputs twice: bitwise equal outputs (the split-K reduction is deterministic; a race would move bits).
TEST_F(Fp8GemmWgmma, Deterministic) {
    std::mt19937 rng(14);
    const Problem pr = make_problem(2112, 7168, rng);
    std::vector<uint16_t> first;
    for (int run = 0; run < 3; ++run) {
        cuda::DeviceBuffer y_dev(static_cast<size_t>(100 * 2112) * 2);
        y_dev.fill_bytes(0xFF);
        cuda::launch_fp8_gemm_wgmma(make_params(pr, 100, 2112, y_dev), nullptr);
        CUDA_CHECK(cudaDeviceSynchronize());
        const auto y = to_host<uint16_t>(y_dev, static_cast<size_t>(100 * 2112));
        if (run == 0) {
            first = y;
        } else {
            EXPECT_TRUE(y == first) << "run " << run << " differs from run 0";
        }
    }
}

// ---- benchmark mode ----

TEST_F(Fp8GemmWgmma, DISABLED_Perf) {
    cudaStream_t stream = nullptr;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    const double copy_gbs = copy_rate_gbs(stream);
    std::printf("copy rate (SM copy kernel, 1 GiB, read+write): %.1f GB/s\n", copy_gbs);
    std::printf("%-15s %4s | %9s %8s | %9s %8s %6s %6s | %6s %9s %6s | %s\n", "shape", "m", "cublas us", "GB/s",
                "ours us", "GB/s", "%copy", "ratio", "model", "best us", "ratio", "best (rows, splits)");
    std::mt19937 rng(21);
    cuda::Fp8GemmRunner runner;
    // A one-tile, four-k-block probe first: launch + pipeline fill + reduction, the fixed cost of every call.
    std::vector<GemmShape> shapes = {{"probe_128x512", 128, 512}};
    shapes.insert(shapes.end(), std::begin(kKimiShapes), std::end(kKimiShapes));
    for (const auto& shape : shapes) {
        const size_t w_bytes = static_cast<size_t>(shape.n * shape.k);
        const int copies = static_cast<int>(std::clamp<size_t>((512ull << 20) / w_bytes + 1, 2, 64));  // > L2
        const auto w_host = fast_normal_fp8(w_bytes, rng);
        const auto ws_host =
            random_uniform(static_cast<size_t>((shape.n + 127) / 128 * (shape.k / 128)), rng, 1e-4f, 4e-4f);
        std::vector<cuda::DeviceBuffer> w, ws;
        for (int c = 0; c < copies; ++c) {
            w.push_back(to_device(w_host));
            ws.push_back(to_device(ws_host));
        }
        for (const int64_t m : {1, 8, 16, 32, 64, 128}) {
            const int64_t m_pad = (m + 15) / 16 * 16;
            const auto x = to_device(fast_normal_fp8(static_cast<size_t>(m_pad * shape.k), rng));
            const auto xs = to_device(random_uniform(static_cast<size_t>(shape.k / 128 * m_pad), rng, 0.01f, 0.02f));
            cuda::DeviceBuffer y(static_cast<size_t>(m_pad * shape.n) * 2);
            cuda::Fp8GemmParams p;
            p.x = x.as<uint8_t>();
            p.x_scale = xs.as<float>();
            p.y = y.as<uint16_t>();
            p.num_tokens = m;
            p.n = shape.n;
            p.k = shape.k;
            p.x_stride = shape.k;
            p.x_scale_stride = m;
            p.y_stride = shape.n;
            auto with_weights = [&](int iter) {
                cuda::Fp8GemmParams q = p;
                q.w = w[static_cast<size_t>(iter % copies)].as<uint8_t>();
                q.w_scale = ws[static_cast<size_t>(iter % copies)].as<float>();
                return q;
            };
            double base_us = 0.0;
            try {
                base_us = time_us([&](int i, cudaStream_t s) { runner.run_cublaslt(with_weights(i), s); }, stream);
            } catch (const Error&) {  // no block-scaled algorithm for this m: time m padded to 16, as a caller would
                p.num_tokens = m_pad;
                p.x_scale_stride = m_pad;
                try {
                    base_us = time_us([&](int i, cudaStream_t s) { runner.run_cublaslt(with_weights(i), s); }, stream);
                } catch (const Error& e) {
                    std::printf("cublaslt refused %s m=%ld: %s\n", shape.name, static_cast<long>(m),
                                e.message().c_str());
                }
                p.num_tokens = m;
                p.x_scale_stride = m;
            }
            const double us =
                time_us([&](int i, cudaStream_t s) { cuda::launch_fp8_gemm_wgmma(with_weights(i), s); }, stream);
            double best_us = us;
            std::string best = "model";
            std::string sweep;
            auto time_variant = [&](const cuda::Fp8GemmWgmmaOptions& o, const std::string& label) {
                const double t =
                    time_us([&](int i, cudaStream_t s) { cuda::launch_fp8_gemm_wgmma(with_weights(i), s, o); }, stream);
                sweep += fmt::format(" {}={:.2f}", label, t);
                if (t < best_us) {
                    best_us = t;
                    best = label;
                }
            };
            const auto model = cuda::fp8_gemm_wgmma_config(m, shape.n, shape.k);
            // K2_WGMMA_SWEEP=1: every forced (rows, splits) too, to check the cost model's choice.
            if (std::getenv("K2_WGMMA_SWEEP") != nullptr) {
                for (const int rows : {128, 64}) {
                    for (const int s_forced : {1, 2, 3, 4, 6, 8}) {
                        time_variant({s_forced, rows}, fmt::format("r{}s{}", rows, s_forced));
                    }
                }
            }
            const double bytes = static_cast<double>(shape.n) * shape.k + m * shape.k + 2.0 * m * shape.n;
            const auto& config = model;
            std::printf("%-15s %4ld | %9.2f %8.1f | %9.2f %8.1f %5.1f%% %5.2fx | r%ds%d %9.2f %5.2fx | %s\n",
                        shape.name, static_cast<long>(m), base_us, bytes / base_us * 1e-3, us, bytes / us * 1e-3,
                        100.0 * bytes / us * 1e-3 / copy_gbs, base_us / us, config.rows, config.splits, best_us,
                        base_us / best_us, best.c_str());
            std::fprintf(stderr, "sweep %s m=%ld:%s\n", shape.name, static_cast<long>(m), sweep.c_str());
            std::fflush(stdout);
        }
    }
    CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace k2::ops_test

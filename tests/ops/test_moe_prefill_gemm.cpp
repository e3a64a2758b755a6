// The one-launch grouped FP8 GEMM of MoE prefill (moe_prefill_gemm.h) against the host reference of the grouped
// GEMM tests (moe_grouped_ref.h: cpu::linear per expert, FP8 weights with 128x128 block scales, over the
// dequantized rows of that expert, quantized per expert into moe_ops.h's expert-blocked scale layout). Experts of
// 0 / 1 / 3 / 17 / 64 / 65 / 129 / 255 / 257 / 300 / 400 rows in both orders (tail tiles anchored at an expert's end
// read the previous expert's rows, or negative rows when P < 64), n % 256 == 128 (the second weight half is
// masked), the four tile shapes (64 / 128 rows x 256 weight rows, 192 / 256 rows x 128 weight rows with x in
// 64-row boxes loaded only where the tile has rows), both item orders, clusters of 2 CTAs sharing the weight or x tile,
// forced grids, a bitwise repeat and bitwise equality of every variant with the default (each output element is the
// same sequence of wgmma k32 steps and fp32 promotions in every tile shape), all experts empty, NaN-poisoned y with
// a row past P that must stay poisoned, x with no rows past P at all, and Kimi-K2's gate_up and down at 8,192 tokens
// x top-8 (384 experts, random routing; sampled rows of 6 experts against the reference, every row checked finite,
// every variant bitwise equal to the first). Without a GPU the device tests skip with the reason; the validation
// test runs everywhere.
// Benchmark (the 4-lane cuBLASLt prefill form timed in the same run; K2_MOE_PERF_QUICK=1 for the m-tile-major
// variants without the 128-row clusters):
// `test_moe_prefill_gemm --gtest_also_run_disabled_tests --gtest_filter='*Perf*'`.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/fp8_gemm.h"
#include "backend/cuda/moe_prefill_gemm.h"
#include "core/error.h"
#include "moe_grouped_ref.h"

namespace k2::ops_test {
namespace {

using moe_ref::Problem;

class MoePrefillGemm : public ::testing::Test {
protected:
    void SetUp() override {
        if (cuda::cuda_device_count() == 0) {
            GTEST_SKIP() << "no CUDA device: the MoE prefill GEMM tests need an sm_90a GPU (run them on the H200)";
        }
    }
};

int max_rows_of(const std::vector<int32_t>& offsets) {
    int best = 0;
    for (size_t e = 0; e + 1 < offsets.size(); ++e)
        best = std::max(best, offsets[e + 1] - offsets[e]);
    return best;
}

bool bf16_finite(uint16_t v) {
    return (v & 0x7F80) != 0x7F80;
}

// An integer from the environment, or `fallback` (the device script narrows the sanitizer / profiler runs with these).
int env_int(const char* name, int fallback) {
    const char* value = std::getenv(name);
    return value != nullptr && *value != '\0' ? std::atoi(value) : fallback;
}

std::vector<uint16_t> run_and_check(Problem& g, int64_t max_rows, const cuda::MoePrefillGemmOptions& o,
                                    const std::string& what) {
    g.y.fill_bytes(0xFF);
    cuda::launch_fp8_grouped_gemm_prefill_wgmma(moe_ref::params_of(g, max_rows), nullptr, o);
    CUDA_CHECK(cudaDeviceSynchronize());
    return moe_ref::expect_matches(g, what);
}

// Expert row counts around the 64-row tile and the boxed tiles' 64-row boxes (0, 1, 3, 17, 64, 65, 129, 255, 257,
// 300, 400: one box, two, three, four, experts of two or three 192 / 256-row tiles with anchored tails) in
// both orders: ascending, the big experts' tail tiles reach back into the previous expert; descending, the 1-row
// expert's tile reads rows of its neighbour and the last expert is empty. x has no rows past P (x_slack 0): nothing
// may address them. n 384 leaves the second 128-row weight half of the last n block past n (masked, its scales
// zero-filled). Every variant must be bitwise equal to the default's output. K2_MOE_EDGE_BLOCK_M=<64|...|256> keeps
// only that tile shape beside the default (for the compute-sanitizer run of the device script).
TEST_F(MoePrefillGemm, EdgeRows) {
    const int only_block_m = env_int("K2_MOE_EDGE_BLOCK_M", 0);
    std::mt19937 rng(71);
    const std::vector<int> ascending = {0, 1, 3, 17, 64, 65, 129, 255, 257, 300, 400};
    const std::vector<int> descending(ascending.rbegin(), ascending.rend());
    struct Shape {
        int64_t n;
        int64_t k;
    };
    for (const Shape s : {Shape{256, 512}, Shape{384, 256}, Shape{128, 128}}) {
        for (const auto* rows : {&ascending, &descending}) {
            auto g = moe_ref::make_problem(*rows, s.n, s.k, rng, 0);
            const std::string what =
                fmt::format("n {} k {} {}", s.n, s.k, rows == &ascending ? "ascending" : "descending");
            const auto first = run_and_check(g, max_rows_of(g.offsets), {}, what);
            for (const int block_m : {64, 128, 192, 256}) {
                if (only_block_m != 0 && block_m != only_block_m)
                    continue;
                for (const int order : {1, 2}) {
                    for (const int grid : {0, 1, 5}) {
                        const auto y = run_and_check(
                            g, 1, {grid, block_m, order, 1},
                            what + fmt::format(" block_m {} order {} grid {} (max_rows_per_expert 1: unused)", block_m,
                                               order, grid));
                        EXPECT_TRUE(y == first) << "block_m " << block_m << " order " << order << " grid " << grid
                                                << ": not bitwise equal to the default";
                    }
                }
            }
            // Pairs of CTAs sharing the weight tile (128: odd tile counts leave the partner idle) or the x tile (192,
            // 256: n 384 has 3 n blocks, so the last pair's second CTA recomputes the last one and stores nothing).
            for (const int block_m : {128, 192, 256}) {
                if (only_block_m != 0 && block_m != only_block_m)
                    continue;
                for (const int order : {1, 2}) {
                    for (const int grid : {0, 2, 6}) {
                        const auto y = run_and_check(
                            g, 1, {grid, block_m, order, 2},
                            what + fmt::format(" block_m {} cluster 2 order {} grid {}", block_m, order, grid));
                        EXPECT_TRUE(y == first) << "block_m " << block_m << " cluster 2 order " << order << " grid "
                                                << grid << ": not bitwise equal to the default";
                    }
                }
            }
            const auto again = run_and_check(g, max_rows_of(g.offsets), {}, what + " repeat");
            EXPECT_TRUE(first == again) << "not bitwise repeatable";
        }
    }
}

// Fewer than 64 rows in all: every tile is an anchored tail whose first rows are negative (TMA zero fill).
TEST_F(MoePrefillGemm, TinyP) {
    std::mt19937 rng(72);
    for (const auto& rows : {std::vector<int>{1}, std::vector<int>{1, 0, 3}, std::vector<int>{0, 0, 5, 0},
                             std::vector<int>{63, 1}, std::vector<int>{2, 62}}) {
        auto g = moe_ref::make_problem(rows, 256, 384, rng, 0);
        for (const auto& [block_m, cluster] :
             {std::pair{64, 1}, std::pair{128, 1}, std::pair{128, 2}, std::pair{192, 1}, std::pair{192, 2},
              std::pair{256, 1}, std::pair{256, 2}}) {
            run_and_check(g, 64, {0, block_m, 0, cluster},
                          fmt::format("P {} over {} experts, block_m {} cluster {}", g.num_rows(), rows.size(), block_m,
                                      cluster));
        }
    }
}

// No rows at all: the CTAs exit after reading the offsets; num_experts 0 or max_rows_per_expert 0 launch nothing.
TEST_F(MoePrefillGemm, NoRows) {
    const moe_ref::EmptyProblem empty;
    cuda::Fp8GroupedGemmParams p = empty.params(4);  // a bound with no rows this step: every CTA exits
    cuda::launch_fp8_grouped_gemm_prefill_wgmma(p, nullptr);
    p.max_rows_per_expert = 0;
    cuda::launch_fp8_grouped_gemm_prefill_wgmma(p, nullptr);
    cuda::Fp8GroupedGemmParams none;  // num_experts 0: a no-op even with null operands
    cuda::launch_fp8_grouped_gemm_prefill_wgmma(none, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    for (const uint16_t v : to_host<uint16_t>(empty.y, 256))
        ASSERT_EQ(v, 0xFFFF) << "y written with no rows";
}

// Every row of y finite, the row past P poisoned, and the sampled rows of 6 experts against the reference.
void expect_kimi_rows(const std::vector<uint16_t>& yh, const std::vector<int>& rows,
                      const std::vector<int32_t>& offsets, const std::vector<uint8_t>& xh, const std::vector<float>& xs,
                      const std::vector<float>& ws, std::vector<std::vector<uint8_t>>& mats, int64_t n, int64_t k,
                      std::mt19937& rng) {
    constexpr int kExperts = 384;
    const int64_t num_rows = offsets.back();
    const int64_t num_kb = k / 128;
    const int64_t sn = n / 128;
    const int64_t non_finite =
        std::count_if(yh.begin(), yh.begin() + num_rows * n, [](uint16_t v) { return !bf16_finite(v); });
    EXPECT_EQ(non_finite, 0) << "NaN/Inf (or unwritten poison) in y";
    for (int64_t i = num_rows * n; i < static_cast<int64_t>(yh.size()); ++i)
        ASSERT_EQ(yh[static_cast<size_t>(i)], 0xFFFF) << "y written past row P";

    std::vector<int> with_rows;
    for (int e = 0; e < kExperts; ++e) {
        if (rows[static_cast<size_t>(e)] > 0)
            with_rows.push_back(e);
    }
    ASSERT_FALSE(with_rows.empty());
    auto by_rows = [&](int a, int b) { return rows[static_cast<size_t>(a)] < rows[static_cast<size_t>(b)]; };
    std::set<int> experts = {with_rows.front(), with_rows.back(),
                             *std::max_element(with_rows.begin(), with_rows.end(), by_rows),
                             *std::min_element(with_rows.begin(), with_rows.end(), by_rows)};
    for (int i = 0; i < 2; ++i)
        experts.insert(with_rows[rng() % with_rows.size()]);
    for (const int e : experts) {
        const int64_t begin = offsets[static_cast<size_t>(e)];
        const int64_t rows_e = rows[static_cast<size_t>(e)];
        std::set<int64_t> picked;
        for (const int64_t j : {int64_t{0}, int64_t{1}, int64_t{63}, int64_t{64}, int64_t{127}, int64_t{128},
                                rows_e / 2, rows_e - 2, rows_e - 1}) {
            if (j >= 0 && j < rows_e)
                picked.insert(j);
        }
        const std::vector<int64_t> sample(picked.begin(), picked.end());
        std::vector<float> x_deq(sample.size() * static_cast<size_t>(k));  // [sample, k]
        std::vector<float> got(sample.size() * static_cast<size_t>(n));    // [sample, n]
        for (size_t i = 0; i < sample.size(); ++i) {
            const int64_t r = begin + sample[i];
            for (int64_t c = 0; c < k; ++c) {
                const float s = xs[static_cast<size_t>(begin * num_kb + (c / 128) * rows_e + sample[i])];
                x_deq[i * static_cast<size_t>(k) + static_cast<size_t>(c)] =
                    fp8_e4m3_to_float(xh[static_cast<size_t>(r * k + c)]) * s;
            }
            for (int64_t c = 0; c < n; ++c)
                got[i * static_cast<size_t>(n) + static_cast<size_t>(c)] =
                    bf16_to_float(yh[static_cast<size_t>(r * n + c)]);
        }
        std::vector<float> want(got.size());
        const Tensor w_tensor = Tensor::view(DType::F8_E4M3, {n, k}, mats[static_cast<size_t>(e % 3)].data());
        const Tensor s_tensor = Tensor::view(DType::F32, {sn, num_kb}, const_cast<float*>(ws.data()) + e * sn * num_kb);
        cpu::linear(x_deq.data(), static_cast<int64_t>(sample.size()), k, w_tensor, &s_tensor, want.data());
        EXPECT_LT(moe_ref::rel_l2(got.data(), want.data(), got.size()), 1e-2)
            << "expert " << e << " (" << rows_e << " rows, " << sample.size() << " sampled)";
    }
}

// Kimi-K2 at a prefill of `tokens` x top-8 over 384 experts with random routing. The host holds x, its scales and
// three distinct weight matrices (expert e gets matrix e % 3 and its own random scales, so that a neighbouring
// expert's weights or scales would show); the reference covers up to 9 rows (first, tile edges, middle, last) of 6
// experts: the first and last with rows, the largest, the smallest and two random ones.
void check_kimi(int64_t n, int64_t k, int64_t tokens, std::mt19937& rng) {
    SCOPED_TRACE(fmt::format("Kimi-K2 n {} k {} tokens {}", n, k, tokens));
    constexpr int kExperts = 384;
    const auto rows = moe_ref::routed_rows(tokens, 8, kExperts, rng);
    std::vector<int32_t> offsets(kExperts + 1, 0);
    std::partial_sum(rows.begin(), rows.end(), offsets.begin() + 1);
    const int64_t num_rows = offsets.back();
    const int64_t num_kb = k / 128;
    const int64_t sn = n / 128;
    std::vector<uint8_t> xh(static_cast<size_t>(num_rows * k));  // [P, k]
    moe_ref::fill_fast_fp8(xh, moe_ref::seed64(rng));
    const auto xs = random_uniform(static_cast<size_t>(num_rows * num_kb), rng, 0.01f, 0.02f);  // expert-blocked
    const auto ws = random_uniform(static_cast<size_t>(kExperts * sn * num_kb), rng, 1e-4f, 4e-4f);
    std::vector<std::vector<uint8_t>> mats(3, std::vector<uint8_t>(static_cast<size_t>(n * k)));  // [n, k] each
    cuda::DeviceBuffer w(static_cast<size_t>(kExperts * n * k));
    for (int m = 0; m < 3; ++m) {
        moe_ref::fill_fast_fp8(mats[static_cast<size_t>(m)], moe_ref::seed64(rng));
        w.upload(mats[static_cast<size_t>(m)].data(), static_cast<size_t>(n * k), static_cast<size_t>(m * n * k));
    }
    for (int e = 3; e < kExperts; ++e) {
        CUDA_CHECK(cudaMemcpy(static_cast<uint8_t*>(w.data()) + e * n * k,
                              static_cast<const uint8_t*>(w.data()) + (e % 3) * n * k, static_cast<size_t>(n * k),
                              cudaMemcpyDeviceToDevice));
    }
    const auto x = to_device(xh);
    const auto x_scale = to_device(xs);
    const auto w_scale = to_device(ws);
    const auto offsets_d = to_device(offsets);
    cuda::DeviceBuffer y(static_cast<size_t>((num_rows + 1) * n) * 2);  // [P + 1, n]
    y.fill_bytes(0xFF);
    cuda::Fp8GroupedGemmParams p;
    p.x = x.as<uint8_t>();
    p.x_scale = x_scale.as<float>();
    p.w = w.as<uint8_t>();
    p.w_scale = w_scale.as<float>();
    p.y = y.as<uint16_t>();
    p.offsets = offsets_d.as<int32_t>();
    p.num_experts = kExperts;
    p.n = n;
    p.k = k;
    p.max_rows_per_expert = tokens;
    std::vector<uint16_t> first;  // [P + 1, n] of the first variant
    for (const auto& [block_m, cluster] : {std::pair{128, 1}, std::pair{192, 1}, std::pair{192, 2}, std::pair{256, 1},
                                           std::pair{256, 2}, std::pair{64, 1}, std::pair{128, 2}}) {
        SCOPED_TRACE(fmt::format("block_m {} cluster {}", block_m, cluster));
        y.fill_bytes(0xFF);
        cuda::launch_fp8_grouped_gemm_prefill_wgmma(p, nullptr, {0, block_m, 0, cluster});
        CUDA_CHECK(cudaDeviceSynchronize());
        auto yh = to_host<uint16_t>(y, static_cast<size_t>((num_rows + 1) * n));
        expect_kimi_rows(yh, rows, offsets, xh, xs, ws, mats, n, k, rng);
        if (first.empty()) {
            first = std::move(yh);
        } else {
            EXPECT_TRUE(yh == first) << "not bitwise equal to block_m 128";
        }
    }
}

// K2_MOE_KIMI_GATE_UP_ONLY=1 skips down (for the profiler run of the device script).
TEST_F(MoePrefillGemm, KimiK2Prefill8k) {
    std::mt19937 rng(73);
    check_kimi(4096, 7168, 8192, rng);  // gate_up
    if (env_int("K2_MOE_KIMI_GATE_UP_ONLY", 0) != 1) {
        check_kimi(7168, 2048, 8192, rng);  // down
    }
}

// Validation before any launch (runs without a GPU: every case throws before CUDA is touched).
TEST(MoePrefillGemmValidation, RejectsBadParams) {
    const cuda::Fp8GroupedGemmParams good = moe_ref::validation_params(8);
    auto expect_throw = [&](auto mutate, const char* what) {
        cuda::Fp8GroupedGemmParams p = good;
        mutate(p);
        EXPECT_THROW(cuda::launch_fp8_grouped_gemm_prefill_wgmma(p, nullptr), Error) << what;
    };
    expect_throw([](auto& p) { p.n = 200; }, "n not a multiple of 128");
    expect_throw([](auto& p) { p.k = 64; }, "k not a multiple of 128");
    expect_throw([](auto& p) { p.k = 0; }, "k 0");
    expect_throw([](auto& p) { p.num_experts = 513; }, "too many experts");
    expect_throw([](auto& p) { p.num_experts = -1; }, "negative experts");
    expect_throw([](auto& p) { p.max_rows_per_expert = -1; }, "negative bound");
    expect_throw([](auto& p) { p.x = nullptr; }, "null x");
    expect_throw([](auto& p) { p.offsets = nullptr; }, "null offsets");
    expect_throw([&](auto& p) { p.x = good.x + 1; }, "misaligned x");
    expect_throw([&](auto& p) { p.w = good.w + 8; }, "misaligned w");
    expect_throw([&](auto& p) { p.y = good.y + 1; }, "misaligned y");
    expect_throw([](auto& p) { p.n = int64_t{1} << 30; }, "weight rows overflow");
    for (const cuda::MoePrefillGemmOptions o :
         {cuda::MoePrefillGemmOptions{-1, 0, 0, 0}, cuda::MoePrefillGemmOptions{0, 96, 0, 0},
          cuda::MoePrefillGemmOptions{0, 0, 3, 0}, cuda::MoePrefillGemmOptions{0, 0, 0, 3},
          cuda::MoePrefillGemmOptions{0, 64, 0, 2}, cuda::MoePrefillGemmOptions{5, 128, 0, 2},
          cuda::MoePrefillGemmOptions{3, 256, 0, 2}, cuda::MoePrefillGemmOptions{0, 512, 0, 0}}) {
        EXPECT_THROW(cuda::launch_fp8_grouped_gemm_prefill_wgmma(good, nullptr, o), Error)
            << "options " << o.grid << " " << o.block_m << " " << o.order << " " << o.cluster;
    }
    cuda::Fp8GroupedGemmParams none = good;
    none.num_experts = 0;
    EXPECT_NO_THROW(cuda::launch_fp8_grouped_gemm_prefill_wgmma(none, nullptr));
    none = good;
    none.max_rows_per_expert = 0;
    EXPECT_NO_THROW(cuda::launch_fp8_grouped_gemm_prefill_wgmma(none, nullptr));
}

// The model's tile choice by rows per expert (docs/perf/moe-prefill-gemm.md): 64-row tiles at a 2k prefill of
// Kimi-K2 (~43 rows per expert), 256 x 128 tiles at 8k (~170), 128 x 256 tiles in between; no clusters.
TEST(MoePrefillGemmValidation, OptionsByRowsPerExpert) {
    EXPECT_EQ(cuda::moe_prefill_gemm_options(2048 * 8, 384).block_m, 64);
    EXPECT_EQ(cuda::moe_prefill_gemm_options(8192 * 8, 384).block_m, 256);
    EXPECT_EQ(cuda::moe_prefill_gemm_options(110 * 384, 384).block_m, 128);
    EXPECT_EQ(cuda::moe_prefill_gemm_options(0, 0).block_m, 64);
    EXPECT_EQ(cuda::moe_prefill_gemm_options(8192 * 8, 384).cluster, 0);
}

// ---- benchmark ----

// Kimi-K2 expert weights (384 experts; random bytes copied from a 32 MB pattern), random routing of `tokens` x
// top-8. TFLOP/s counts 2 * P * n * k of the real rows only. Both forms see the same buffers (x and y with the 16
// rows of slack the lanes' padded cuBLASLt path needs).
TEST_F(MoePrefillGemm, DISABLED_Perf) {
    constexpr int kExperts = 384;
    // K2_MOE_PERF_QUICK=1: the m-tile-major variants only, without the 128-row clusters (a short device call).
    const char* quick_env = std::getenv("K2_MOE_PERF_QUICK");
    const bool quick = quick_env != nullptr && std::string(quick_env) == "1";
    cudaStream_t stream = nullptr;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    std::mt19937 rng(74);
    std::vector<uint8_t> pattern(32u << 20);
    moe_ref::fill_fast_fp8(pattern, moe_ref::seed64(rng));
    const auto pattern_d = to_device(pattern);
    std::printf("%-8s %6s %6s %7s | %10s %8s | %10s %8s %7s | %s\n", "shape", "tokens", "P", "maxrows", "lanes us",
                "TFLOP/s", "ours us", "TFLOP/s", "speedup",
                "variants block_m/order/cluster (order 1 m-tile major, 2 expert major)");
    const std::pair<int64_t, int64_t> shapes[] = {{4096, 7168}, {7168, 2048}};
    for (const auto& [n, k] : shapes) {
        const char* name = n == 4096 ? "gate_up" : "down";
        const cuda::DeviceBuffer w = moe_ref::repeated_weights(pattern_d, pattern.size(), kExperts, n, k);
        const auto ws =
            to_device(random_uniform(static_cast<size_t>(kExperts * (n / 128) * (k / 128)), rng, 1e-4f, 4e-4f));
        for (const int64_t tokens : {8192, 2048}) {
            const auto rows = moe_ref::routed_rows(tokens, 8, kExperts, rng);
            std::vector<int32_t> off(kExperts + 1, 0);
            std::partial_sum(rows.begin(), rows.end(), off.begin() + 1);
            const int64_t num_rows = off.back();
            const int max_rows = max_rows_of(off);
            std::vector<uint8_t> xh(static_cast<size_t>((num_rows + 16) * k));
            moe_ref::fill_fast_fp8(xh, moe_ref::seed64(rng));
            const auto x = to_device(xh);
            const auto xs =
                to_device(random_uniform(static_cast<size_t>((num_rows + 16) * (k / 128)), rng, 0.01f, 0.02f));
            const auto off_d = to_device(off);
            cuda::DeviceBuffer y(static_cast<size_t>((num_rows + 16) * n) * 2);
            cuda::Fp8GroupedGemmParams p;
            p.x = x.as<uint8_t>();
            p.x_scale = xs.as<float>();
            p.w = w.as<uint8_t>();
            p.w_scale = ws.as<float>();
            p.y = y.as<uint16_t>();
            p.offsets = off_d.as<int32_t>();
            p.num_experts = kExperts;
            p.n = n;
            p.k = k;
            p.max_rows_per_expert = tokens;
            const double flops = 2.0 * static_cast<double>(num_rows) * n * k;
            // "ours": the model's choice (moe_prefill_gemm_options by rows per expert).
            const cuda::MoePrefillGemmOptions chosen = cuda::moe_prefill_gemm_options(num_rows, kExperts);
            const double ours_us = time_us(
                [&](int, cudaStream_t s) { cuda::launch_fp8_grouped_gemm_prefill_wgmma(p, s, chosen); }, stream);
            std::string variants;
            for (const auto& [block_m, cluster] :
                 {std::pair{64, 1}, std::pair{128, 1}, std::pair{128, 2}, std::pair{192, 1}, std::pair{192, 2},
                  std::pair{256, 1}, std::pair{256, 2}}) {
                for (const int order : {1, 2}) {
                    if (quick && (order != 1 || (block_m == 128 && cluster == 2)))
                        continue;
                    const cuda::MoePrefillGemmOptions o{0, block_m, order, cluster};
                    const double us = time_us(
                        [&](int, cudaStream_t s) { cuda::launch_fp8_grouped_gemm_prefill_wgmma(p, s, o); }, stream);
                    variants +=
                        fmt::format(" {}/{}/c{}={:.1f}us({:.0f})", block_m, order, cluster, us, flops / us * 1e-6);
                }
            }
            moe_ref::Lanes lanes(4, n, k, max_rows);
            const double lanes_us = time_us(
                [&](int, cudaStream_t s) {
                    cuda::run_fp8_grouped_gemm_prefill_lanes(lanes.lanes, p, off.data(), s, lanes.fork);
                },
                stream);
            std::printf("%-8s %6ld %6ld %7d | %10.1f %8.1f | %10.1f %8.1f %6.2fx |%s\n", name,
                        static_cast<long>(tokens), static_cast<long>(num_rows), max_rows, lanes_us,
                        flops / lanes_us * 1e-6, ours_us, flops / ours_us * 1e-6, lanes_us / ours_us, variants.c_str());
            std::fflush(stdout);
        }
    }
    CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace k2::ops_test

// The wgmma grouped MoE decode GEMM (moe_gemm_wgmma.h) against the host reference test_moe_ops.cpp uses for the
// grouped GEMM: cpu::linear per expert (FP8 weights with 128x128 block scales) over the dequantized activations of
// that expert's rows, quantized per expert into moe_ops.h's expert-blocked scale layout. Experts with 0 / 1 / 3 /
// 17 / more rows than the pass, forced pass sizes and grids, NaN-poisoned outputs with a row past P that must stay
// poisoned, x rows past P that are e4m3 NaN, untouched experts' weights NaN, a CUDA graph capture, and Kimi-K2's
// expert shapes. Without a GPU the device tests skip with the reason; the validation test runs everywhere.
// Benchmark (old grouped decode kernel and the copy rate in the same run):
// `test_moe_gemm_wgmma --gtest_also_run_disabled_tests --gtest_filter='*Perf*'`.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/linear.h"
#include "backend/cpu/ref_fp8_quant.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_copy.h"
#include "backend/cuda/moe_gemm_wgmma.h"
#include "backend/cuda/moe_ops.h"
#include "backend/cuda/moe_ops_detail.h"
#include "core/error.h"
#include "core/tensor.h"
#include "moe_grouped_ref.h"
#include "ops_common.h"

namespace k2::ops_test {
namespace {

class MoeGemmWgmma : public ::testing::Test {
protected:
    void SetUp() override {
        if (cuda::cuda_device_count() == 0) {
            GTEST_SKIP() << "no CUDA device: the wgmma MoE GEMM tests need an sm_90a GPU (run them on the H200)";
        }
    }
};

using moe_ref::fill_fast_fp8;
using moe_ref::params_of;
using moe_ref::Problem;
using moe_ref::rel_l2;
using moe_ref::routed_rows;
using moe_ref::seed64;

constexpr int64_t kXSlackRows = 80;  // x rows past P, e4m3 NaN: a pass must never let them into a stored column

// One grouped problem from per-expert row counts (moe_grouped_ref.h), with kXSlackRows NaN rows of x past P.
Problem make_problem(const std::vector<int>& rows_per_expert, int64_t n, int64_t k, std::mt19937& rng) {
    return moe_ref::make_problem(rows_per_expert, n, k, rng, kXSlackRows);
}

std::vector<uint16_t> run_and_check(Problem& g, int64_t max_rows, const cuda::MoeGemmWgmmaOptions& o,
                                    const std::string& what) {
    g.y.fill_bytes(0xFF);
    cuda::launch_fp8_grouped_gemm_wgmma(params_of(g, max_rows), nullptr, o);
    CUDA_CHECK(cudaDeviceSynchronize());
    return moe_ref::expect_matches(g, what);
}

// Rows per expert covering every case of a pass: 0, 1, 3, 16, 17, 32, 33, 64, 65 and 130 (3 passes of 64, 9 of 16).
const std::vector<int> kEdgeRows = {0, 1, 3, 17, 0, 70, 16, 32, 33, 64, 65, 0, 130, 2, 0};

// Both the pass size from the bound (130 -> 32; 1 -> 16 with an understated bound: more passes, same result) and
// forced ones; grids of 1 and 5 CTAs (many items per CTA: the ring runs on across items of different N) and the
// default. k = 128 (one k block: fewer stages per item than the producer's lag), 512 and 1280; n = 128 (2 tiles)
// and 384. Repeated launches are bitwise equal (no atomics, fixed order).
TEST_F(MoeGemmWgmma, EdgeRows) {
    std::mt19937 rng(31);
    struct Shape {
        int64_t n;
        int64_t k;
    };
    for (const Shape s : {Shape{384, 512}, Shape{128, 128}, Shape{256, 1280}}) {
        auto g = make_problem(kEdgeRows, s.n, s.k, rng);
        const std::string shape = fmt::format("n {} k {}", s.n, s.k);
        const auto first = run_and_check(g, 130, {}, shape + " default");
        run_and_check(g, 1, {}, shape + " bound 1");
        for (const int max_n : {16, 32, 64}) {
            for (const int grid : {1, 5, 0}) {
                const auto again =
                    run_and_check(g, 130, {max_n, grid}, fmt::format("{} max_n {} grid {}", shape, max_n, grid));
                if (max_n == 32 && grid == 0) {
                    EXPECT_EQ(again, first) << "not bitwise deterministic";
                }
            }
        }
    }
}

// Every expert with rows, one with exactly one pass of each size, and more CTAs than items.
TEST_F(MoeGemmWgmma, SmallProblems) {
    std::mt19937 rng(32);
    {
        auto g = make_problem({1}, 128, 256, rng);  // one expert, one row, 2 items on a full grid
        run_and_check(g, 1, {}, "1 expert 1 row");
    }
    {
        auto g = make_problem({16, 32, 64, 5}, 256, 384, rng);
        run_and_check(g, 64, {}, "full passes");
        run_and_check(g, 64, {16, 3}, "full passes max_n 16 grid 3");
    }
}

// No rows anywhere: a bound of 0 is a no-op (even with null pointers), a bound of 4 (a graph captured for 4 tokens
// whose step routed nothing here: expert parallelism) launches and every CTA exits; y stays poisoned.
TEST_F(MoeGemmWgmma, NoRows) {
    std::mt19937 rng(33);
    auto g = make_problem(std::vector<int>(16, 0), 256, 256, rng);
    g.y.fill_bytes(0xFF);
    cuda::Fp8GroupedGemmParams empty;
    empty.num_experts = 16;
    cuda::launch_fp8_grouped_gemm_wgmma(empty, nullptr);
    cuda::launch_fp8_grouped_gemm_wgmma(params_of(g, 4), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    for (const uint16_t v : to_host<uint16_t>(g.y, 256))
        ASSERT_EQ(v, 0xFFFF) << "y written with no rows";
}

// Captured into a CUDA graph (the decode step's form): no host read of the counts, so capture succeeds, and
// the replay reads the offsets present at replay time (changed after the capture here).
TEST_F(MoeGemmWgmma, GraphCapture) {
    std::mt19937 rng(34);
    auto g = make_problem({2, 0, 5, 1}, 256, 512, rng);
    auto h = make_problem({0, 7, 0, 1}, 256, 512, rng);  // same P = 8 rows: h's data copied into g's buffers later
    ASSERT_EQ(g.num_rows(), h.num_rows());
    cudaStream_t stream = nullptr;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaGraph_t graph = nullptr;
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    cuda::launch_fp8_grouped_gemm_wgmma(params_of(g, 8), stream);
    CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec = nullptr;
    CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    g.y.fill_bytes(0xFF);
    CUDA_CHECK(cudaGraphLaunch(exec, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    moe_ref::expect_matches(g, "graph replay");
    // Step 2: another routing of the same 8 rows written into the captured buffers.
    auto copy = [](cuda::DeviceBuffer& dst, const cuda::DeviceBuffer& src) {
        CUDA_CHECK(cudaMemcpy(dst.data(), src.data(), src.num_bytes(), cudaMemcpyDeviceToDevice));
    };
    copy(g.x, h.x);
    copy(g.x_scale, h.x_scale);
    copy(g.w, h.w);
    copy(g.w_scale, h.w_scale);
    copy(g.offsets_d, h.offsets_d);
    h.y.fill_bytes(0xFF);
    g.y.fill_bytes(0xFF);
    CUDA_CHECK(cudaGraphLaunch(exec, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    copy(h.y, g.y);
    moe_ref::expect_matches(h, "graph replay with new offsets");
    CUDA_CHECK(cudaGraphExecDestroy(exec));
    CUDA_CHECK(cudaGraphDestroy(graph));
    CUDA_CHECK(cudaStreamDestroy(stream));
}

// Kimi-K2's expert shapes, 384 experts, top-8: 3 tokens (mostly one row per touched expert) and 16 tokens over a
// pool of 40 experts (~3 rows each); either way at least 89% of the experts are empty.
TEST_F(MoeGemmWgmma, KimiK2Shapes) {
    std::mt19937 rng(35);
    const std::pair<int64_t, int64_t> shapes[] = {{4096, 7168}, {7168, 2048}};  // gate_up, down
    for (const auto& [n, k] : shapes) {
        for (const auto& [tokens, pool] : {std::pair<int64_t, int>{3, 0}, std::pair<int64_t, int>{16, 40}}) {
            auto g = make_problem(routed_rows(tokens, 8, 384, rng, pool), n, k, rng);
            run_and_check(g, tokens, {}, fmt::format("n {} k {} tokens {} pool {}", n, k, tokens, pool));
        }
    }
}

// Validation before any launch (runs without a GPU: every case throws before CUDA is touched).
TEST(MoeGemmWgmmaValidation, RejectsBadParams) {
    const cuda::Fp8GroupedGemmParams good = moe_ref::validation_params(3);
    auto expect_throw = [&](cuda::Fp8GroupedGemmParams p, const cuda::MoeGemmWgmmaOptions& o, const char* what) {
        EXPECT_THROW(cuda::launch_fp8_grouped_gemm_wgmma(p, nullptr, o), Error) << what;
    };
    auto with = [&](auto edit) {
        cuda::Fp8GroupedGemmParams p = good;
        edit(p);
        return p;
    };
    expect_throw(with([](auto& p) { p.num_experts = 0; }), {}, "no experts");
    expect_throw(with([](auto& p) { p.num_experts = 513; }), {}, "too many experts");
    expect_throw(with([](auto& p) { p.n = 200; }), {}, "n not a multiple of 128");
    expect_throw(with([](auto& p) { p.k = 100; }), {}, "k not a multiple of 128");
    expect_throw(with([](auto& p) { p.max_rows_per_expert = -1; }), {}, "negative bound");
    expect_throw(with([](auto& p) { p.x = nullptr; }), {}, "null x");
    expect_throw(with([](auto& p) { p.offsets = nullptr; }), {}, "null offsets");
    expect_throw(with([&](auto& p) { p.x = good.x + 1; }), {}, "unaligned x");
    expect_throw(with([](auto& p) {
                     p.n = int64_t{1} << 24;
                     p.num_experts = 256;
                 }),
                 {}, "tensor map rows overflow");
    expect_throw(good, {48, 0}, "max_n 48");
    expect_throw(good, {16, -1}, "negative grid");
    cuda::Fp8GroupedGemmParams none;  // bound 0: a no-op before any check
    EXPECT_NO_THROW(cuda::launch_fp8_grouped_gemm_wgmma(none, nullptr));
}

// ---- benchmark mode ----

// The old kernel's raw launch with moe_ops.cpp's tile choice (so that the table keeps timing it after the choice
// in launch_fp8_grouped_gemm_decode moves to the new kernel).
void launch_old(const cuda::Fp8GroupedGemmParams& p, cudaStream_t stream) {
    const int64_t rows = std::min(p.max_rows_per_expert, cuda::kDecodeTokensPerPass);
    const int64_t tiles = (rows + 7) / 8;
    const int max_tiles = tiles <= 1 ? 1 : tiles <= 2 ? 2 : tiles <= 4 ? 4 : 8;
    CUDA_CHECK(cuda::detail::launch_fp8_grouped_gemm_decode_kernel(p, max_tiles, stream));
}

// Full Kimi-K2 expert weights (384 experts; random bytes copied from a 32 MB pattern), 4 random routings per token
// count rotated over the calls so that the touched experts change from call to call (1 token touches 8 experts:
// 117-235 MB, above the L2 only by a factor 2-4). GB/s counts the touched experts' weights + their scales + x + y.
TEST_F(MoeGemmWgmma, DISABLED_Perf) {
    constexpr int kExperts = 384;
    constexpr int kTopK = 8;
    constexpr int kRoutings = 4;
    cudaStream_t stream = nullptr;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    const double copy_gbs = copy_rate_gbs(stream);
    std::printf("copy rate (SM copy kernel, 1 GiB, read+write): %.1f GB/s\n", copy_gbs);
    std::printf("%-8s %6s %7s %8s | %9s %8s %6s | %9s %8s %6s %6s | %4s %s\n", "shape", "tokens", "experts", "MB",
                "old us", "GB/s", "%copy", "new us", "GB/s", "%copy", "ratio", "maxN", "persistent (us / % of copy)");
    std::mt19937 rng(41);
    std::vector<uint8_t> pattern(32u << 20);
    fill_fast_fp8(pattern, seed64(rng));
    const auto pattern_d = to_device(pattern);
    const std::pair<int64_t, int64_t> shapes[] = {{4096, 7168}, {7168, 2048}};
    for (const auto& [n, k] : shapes) {
        const char* name = n == 4096 ? "gate_up" : "down";
        const cuda::DeviceBuffer w = moe_ref::repeated_weights(pattern_d, pattern.size(), kExperts, n, k);
        const auto ws =
            to_device(random_uniform(static_cast<size_t>(kExperts * (n / 128) * (k / 128)), rng, 1e-4f, 4e-4f));
        for (const int64_t tokens : {1, 4, 8, 16, 64, 256}) {
            const int64_t num_rows = tokens * kTopK;
            std::vector<uint8_t> xh(static_cast<size_t>(num_rows * k));
            fill_fast_fp8(xh, seed64(rng));
            const auto x = to_device(xh);
            const auto xs = to_device(random_uniform(static_cast<size_t>(num_rows * (k / 128)), rng, 0.01f, 0.02f));
            cuda::DeviceBuffer y(static_cast<size_t>(num_rows * n) * 2);
            std::vector<cuda::DeviceBuffer> offsets;
            double touched = 0.0;
            for (int r = 0; r < kRoutings; ++r) {
                const auto rows = routed_rows(tokens, kTopK, kExperts, rng);
                std::vector<int32_t> off(kExperts + 1, 0);
                std::partial_sum(rows.begin(), rows.end(), off.begin() + 1);
                touched += static_cast<double>(std::count_if(rows.begin(), rows.end(), [](int v) { return v > 0; }));
                offsets.push_back(to_device(off));
            }
            touched /= kRoutings;
            cuda::Fp8GroupedGemmParams p;
            p.x = x.as<uint8_t>();
            p.x_scale = xs.as<float>();
            p.w = w.as<uint8_t>();
            p.w_scale = ws.as<float>();
            p.y = y.as<uint16_t>();
            p.num_experts = kExperts;
            p.n = n;
            p.k = k;
            p.max_rows_per_expert = tokens;
            auto routed = [&](int iter) {
                cuda::Fp8GroupedGemmParams q = p;
                q.offsets = offsets[static_cast<size_t>(iter % kRoutings)].as<int32_t>();
                return q;
            };
            const double bytes = touched * (static_cast<double>(n) * k + (n / 128) * (k / 128) * 4.0) +
                                 num_rows * (k + k / 128 * 4.0 + 2.0 * n);
            const double old_us = time_us([&](int i, cudaStream_t s) { launch_old(routed(i), s); }, stream);
            const double new_us =
                time_us([&](int i, cudaStream_t s) { cuda::launch_fp8_grouped_gemm_wgmma(routed(i), s); }, stream);
            // The decode launch's persistent form (moe_ops.h): L2 prefetch 0 / 4 / 8 k blocks with whole slices per
            // warp (s1), and up to 16 tokens 0 / 4 with each slice's k split over a block's warps (s4).
            std::string forced;
            for (const auto& [l2_ahead, k_split] : {std::pair{0, 1}, {4, 1}, {8, 1}, {0, 4}, {4, 4}}) {
                if (k_split == 4 && tokens > 16) {
                    continue;
                }
                const double t = time_us(
                    [&](int i, cudaStream_t s) {
                        cuda::Fp8GroupedGemmParams q = routed(i);
                        q.decode_kernel = cuda::GroupedDecodeKernel::Persistent;
                        q.l2_ahead = l2_ahead;
                        q.decode_k_split = k_split;
                        cuda::launch_fp8_grouped_gemm_decode(q, s);
                    },
                    stream);
                forced += fmt::format(" l2_{}/s{}={:.1f}us/{:.1f}%", l2_ahead, k_split, t,
                                      100.0 * bytes / t * 1e-3 / copy_gbs);
            }
            const int max_n = tokens <= 16 ? 16 : 32;  // moe_gemm_wgmma.cpp's default
            std::printf("%-8s %6ld %7.1f %8.1f | %9.1f %8.1f %5.1f%% | %9.1f %8.1f %5.1f%% %5.2fx | %4d%s\n", name,
                        static_cast<long>(tokens), touched, bytes * 1e-6, old_us, bytes / old_us * 1e-3,
                        100.0 * bytes / old_us * 1e-3 / copy_gbs, new_us, bytes / new_us * 1e-3,
                        100.0 * bytes / new_us * 1e-3 / copy_gbs, old_us / new_us, max_n, forced.c_str());
            std::fflush(stdout);
        }
    }
    CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace k2::ops_test

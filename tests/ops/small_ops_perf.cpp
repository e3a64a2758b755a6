// DISABLED_Perf of test_small_ops: each small op at 16 tokens (the decode batch), 64, 256, 1024 and 8192 (prefill),
// on Kimi-K2 shapes, and rms_norm + fp8_quant against their fused launch in the same run. (The before/after table of
// docs/perf/small-ops.md was measured with the pre-rewrite kernels beside these, at git 3c92f03.)
// time_us (ops_timing.cpp) replays a CUDA graph of 20 launches in a row, so launch overhead is excluded the way
// the model's decode graphs exclude it. Inputs are not rotated: at decode the previous kernel has just written
// them, so they sit in L2 as they do here. Run: test_small_ops --gtest_also_run_disabled_tests
// --gtest_filter='*Perf*' (bench/small_ops.sh device).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/fp8_quant.h"
#include "backend/cuda/model_ops.h"
#include "backend/cuda/moe_layout.h"
#include "backend/cuda/moe_ops.h"
#include "backend/cuda/moe_router.h"
#include "ops_common.h"

namespace k2::ops_test {
namespace {

constexpr int64_t kHidden = 7168;
constexpr int kExperts = 384;
constexpr int kTopK = 8;

size_t sz(int64_t n) {
    return static_cast<size_t>(n);
}

using Body = std::function<void(int, cudaStream_t)>;

void time_one(const std::string& name, int64_t tokens, const Body& body, cudaStream_t s) {
    std::printf("%-46s %5lld tok  %8.2f us\n", name.c_str(), static_cast<long long>(tokens), time_us(body, s));
    std::fflush(stdout);
}

// Two forms of the same work in the same run (e.g. two launches against their fused kernel).
void time_pair(const std::string& name, int64_t tokens, const Body& base, const Body& fused, cudaStream_t s) {
    const double b = time_us(base, s);
    const double f = time_us(fused, s);
    std::printf("%-46s %5lld tok  two launches %8.2f us  fused %8.2f us  %5.2fx\n", name.c_str(),
                static_cast<long long>(tokens), b, f, b / f);
    std::fflush(stdout);
}

// Device buffers filled with one finite byte pattern: the timed kernels' cost does not depend on the values
// (only the router's and the permute's do, and those get random inputs), and hundreds of MB of host randoms
// would take longer than the whole benchmark.
cuda::DeviceBuffer filled(size_t bytes, int byte) {
    cuda::DeviceBuffer b(bytes);
    b.fill_bytes(byte);
    return b;
}

void perf_norms(int64_t t, cudaStream_t s) {
    const auto x = filled(sz(t * kHidden) * 2, 0x3C);  // bf16 0x3C3C ~ 0.0115
    auto res = filled(sz(t * kHidden) * 2, 0x3C);
    const auto w = filled(sz(kHidden) * 2, 0x3F);  // bf16 0x3F3F ~ 0.75
    cuda::DeviceBuffer out(sz(t * kHidden) * 2);
    cuda::DeviceBuffer q(sz(t * kHidden));
    cuda::DeviceBuffer scale(sz(kHidden / 128 * t) * 4);

    cuda::RmsNormParams n;
    n.x = x.as<uint16_t>();
    n.residual = res.as<uint16_t>();
    n.weight = w.as<uint16_t>();
    n.out = out.as<uint16_t>();
    n.num_tokens = t;
    n.hidden = kHidden;
    n.x_stride = kHidden;
    n.out_stride = kHidden;
    time_one(
        "rms_norm +residual 7168", t, [&](int, cudaStream_t st) { cuda::launch_rms_norm(n, st); }, s);

    cuda::RmsNormQuantParams nq;
    nq.x = x.as<uint16_t>();
    nq.residual = res.as<uint16_t>();
    nq.weight = w.as<uint16_t>();
    nq.out = q.as<uint8_t>();
    nq.out_scale = scale.as<float>();
    nq.num_tokens = t;
    nq.hidden = kHidden;
    nq.x_stride = kHidden;
    nq.out_stride = kHidden;
    nq.scale_stride = t;
    time_one(
        "rms_norm_quant +residual 7168", t, [&](int, cudaStream_t st) { cuda::launch_rms_norm_quant(nq, st); }, s);

    cuda::RmsNormQuantParams qa = nq;  // q_a_layernorm: 1536 wide, no residual
    qa.residual = nullptr;
    qa.hidden = 1536;
    qa.x_stride = 1536;
    qa.out_stride = 1536;
    time_one(
        "rms_norm_quant 1536 (q_a norm)", t, [&](int, cudaStream_t st) { cuda::launch_rms_norm_quant(qa, st); }, s);

    // The MoE layer's input: bf16 rows for the router and their FP8 codes for the experts. Before: two kernels
    // (the old rms_norm, then fp8_quant); after: one rms_norm_quant with out_bf16.
    cuda::Fp8QuantParams fq;
    fq.x = out.as<uint16_t>();
    fq.out = q.as<uint8_t>();
    fq.out_scale = scale.as<float>();
    fq.num_tokens = t;
    fq.hidden = kHidden;
    fq.x_stride = kHidden;
    fq.out_stride = kHidden;
    fq.scale_stride = t;
    cuda::RmsNormQuantParams fused = nq;
    fused.out_bf16 = out.as<uint16_t>();
    fused.out_bf16_stride = kHidden;
    time_pair(
        "rms_norm+fp8_quant 7168 -> fused bf16+fp8", t,
        [&](int, cudaStream_t st) {
            cuda::launch_rms_norm(n, st);
            cuda::launch_fp8_quant(fq, st);
        },
        [&](int, cudaStream_t st) { cuda::launch_rms_norm_quant(fused, st); }, s);
}

void perf_router(int64_t t, cudaStream_t s) {
    std::mt19937 rng(82);
    const auto logits = to_device(random_uniform(sz(t * kExperts), rng, -4.0f, 4.0f));
    const auto bias = to_device(random_uniform(sz(kExperts), rng, -0.5f, 0.5f));
    cuda::DeviceBuffer ids(sz(t * kTopK) * 4);
    cuda::DeviceBuffer weights(sz(t * kTopK) * 4);
    cuda::MoeRouterParams p;
    p.logits = logits.as<float>();
    p.bias = bias.as<float>();
    p.topk_ids = ids.as<int32_t>();
    p.topk_weights = weights.as<float>();
    p.num_tokens = t;
    p.num_experts = kExperts;
    p.top_k = kTopK;
    p.routed_scaling_factor = 2.827f;
    time_one(
        "moe_router 384 experts top-8", t, [&](int, cudaStream_t st) { cuda::launch_moe_router(p, st); }, s);
}

void perf_moe_moves(int64_t t, cudaStream_t s) {
    std::mt19937 rng(83);
    const int64_t rows = t * kTopK;
    std::vector<int32_t> ids;
    std::vector<int32_t> all(kExperts);
    std::iota(all.begin(), all.end(), 0);
    for (int64_t i = 0; i < t; ++i) {
        std::shuffle(all.begin(), all.end(), rng);
        ids.insert(ids.end(), all.begin(), all.begin() + kTopK);
    }
    const auto ids_dev = to_device(ids);
    cuda::DeviceBuffer offsets(sz(kExperts + 1) * 4);
    cuda::DeviceBuffer row_token(sz(rows) * 4);
    cuda::DeviceBuffer pair_row(sz(rows) * 4);
    cuda::MoePermuteParams pp;
    pp.topk_ids = ids_dev.as<int32_t>();
    pp.offsets = offsets.as<int32_t>();
    pp.row_token = row_token.as<int32_t>();
    pp.pair_row = pair_row.as<int32_t>();
    pp.num_tokens = t;
    pp.top_k = kTopK;
    pp.num_experts = kExperts;
    time_one(
        "moe_permute 384 experts top-8", t, [&](int, cudaStream_t st) { cuda::launch_moe_permute(pp, st); }, s);
    CUDA_CHECK(cudaStreamSynchronize(s));

    const auto x = filled(sz(t * kHidden), 0x3C);             // e4m3 0x3C = 1.5
    const auto xs = filled(sz(kHidden / 128 * t) * 4, 0x3C);  // f32 ~ 0.0115
    cuda::DeviceBuffer gathered(sz(rows * kHidden));
    cuda::DeviceBuffer gathered_scale(sz(rows * kHidden / 128) * 4);
    cuda::MoeGatherParams gp;
    gp.x = x.as<uint8_t>();
    gp.x_scale = xs.as<float>();
    gp.row_token = row_token.as<int32_t>();
    gp.offsets = offsets.as<int32_t>();
    gp.out = gathered.as<uint8_t>();
    gp.out_scale = gathered_scale.as<float>();
    gp.num_rows = rows;
    gp.k = kHidden;
    gp.x_scale_stride = t;
    gp.num_experts = kExperts;
    time_one(
        "moe_gather 7168 (fp8 rows + scales)", t, [&](int, cudaStream_t st) { cuda::launch_moe_gather(gp, st); }, s);

    const int64_t down_groups = 2048 / 128;  // the down projection's input: moe_intermediate_size 2048
    const auto flat = filled(sz(down_groups * rows) * 4, 0x3C);
    cuda::MoeScaleLayoutParams lp;
    lp.scale = flat.as<float>();
    lp.offsets = offsets.as<int32_t>();
    lp.out = gathered_scale.as<float>();
    lp.num_rows = rows;
    lp.num_groups = down_groups;
    lp.num_experts = kExperts;
    time_one(
        "moe_scales_to_expert_blocked 16 groups", t,
        [&](int, cudaStream_t st) { cuda::launch_moe_scales_to_expert_blocked(lp, st); }, s);

    const auto y = filled(sz(rows * kHidden) * 2, 0x3C);
    const auto weights = filled(sz(rows) * 4, 0x3C);
    const auto shared = filled(sz(t * kHidden) * 2, 0x3C);
    cuda::DeviceBuffer out(sz(t * kHidden) * 2);
    cuda::MoeCombineParams cp;
    cp.y = y.as<uint16_t>();
    cp.pair_row = pair_row.as<int32_t>();
    cp.topk_weights = weights.as<float>();
    cp.shared = shared.as<uint16_t>();
    cp.out = out.as<uint16_t>();
    cp.num_tokens = t;
    cp.hidden = kHidden;
    cp.top_k = kTopK;
    time_one(
        "moe_combine 7168 top-8 + shared", t, [&](int, cudaStream_t st) { cuda::launch_moe_combine(cp, st); }, s);
}

class CudaSmallOpsPerf : public ::testing::Test {
protected:
    void SetUp() override {
        if (cuda::cuda_device_count() == 0) {
            GTEST_SKIP() << "no CUDA device: the benchmark needs a GPU (run it on the H200)";
        }
    }
};

TEST_F(CudaSmallOpsPerf, DISABLED_Perf) {
    cudaStream_t s = nullptr;
    CUDA_CHECK(cudaStreamCreate(&s));
    std::printf("median µs per launch over CUDA-graph replays of 20 launches in a row\n");
    for (const int64_t t : {16, 64, 256, 1024, 8192}) {
        perf_norms(t, s);
        perf_router(t, s);
        perf_moe_moves(t, s);
    }
    CUDA_CHECK(cudaStreamDestroy(s));
}

}  // namespace
}  // namespace k2::ops_test

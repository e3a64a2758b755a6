// The small decode ops after their rewrite for batch 16 (bench/small_ops.sh, docs/perf/small-ops.md):
// - rms_norm_quant's optional bf16 output (RmsNormQuantParams::out_bf16) against launch_rms_norm followed by
//   launch_fp8_quant, bit for bit, and its bf16 rows against cpu::rms_norm;
// - the norms at widths that take 2, 4 or 8 chunks per thread (hidden > 8192) against cpu::rms_norm and a host
//   quantization;
// - the router, gather, combine and scale relayout against their kernels before the rewrite (small_ops_before.cu,
//   copied from git 8b93114), bit for bit: these ops are exact (indices, copies) or keep their summation order.
// Outputs are poisoned (0xFF) before every launch and checked to stay so outside the written range. Without a GPU
// the device tests skip with the reason; the validation test runs everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/norm.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/fp8_quant.h"
#include "backend/cuda/model_ops.h"
#include "backend/cuda/moe_layout.h"
#include "backend/cuda/moe_ops.h"
#include "backend/cuda/moe_router.h"
#include "core/error.h"
#include "core/tensor.h"
#include "ops_common.h"
#include "small_ops_before.h"

namespace k2::ops_test {
namespace {

size_t sz(int64_t n) { return static_cast<size_t>(n); }

class CudaSmallOps : public ::testing::Test {
protected:
    void SetUp() override {
        if (cuda::cuda_device_count() == 0) {
            GTEST_SKIP() << "no CUDA device: the CUDA op tests need a GPU (run them on the H200)";
        }
    }
};

// cpu::rms_norm over the bf16 inputs (x, or bf16(x + residual) as the residual output holds it).
std::vector<float> host_rms_norm(const std::vector<uint16_t>& x, int64_t x_stride, const std::vector<uint16_t>* residual,
                                 const std::vector<uint16_t>& weight, int64_t num_tokens, int64_t hidden) {
    std::vector<float> in(sz(num_tokens * hidden));
    for (int64_t t = 0; t < num_tokens; ++t) {
        for (int64_t i = 0; i < hidden; ++i) {
            float v = bf16_to_float(x[sz(t * x_stride + i)]);
            if (residual != nullptr)
                v = bf16_to_float(float_to_bf16(v + bf16_to_float((*residual)[sz(t * hidden + i)])));
            in[sz(t * hidden + i)] = v;
        }
    }
    std::vector<uint16_t> w_bits(weight);
    const Tensor w = Tensor::view(DType::BF16, {hidden}, w_bits.data());
    std::vector<float> out(in.size());
    cpu::rms_norm(in.data(), num_tokens, hidden, w, 1e-6f, out.data());
    return out;
}

// bf16 rows [num_tokens, hidden] (row stride `stride`) against the reference: each element within one bf16 ulp
// (2^-7 relative: the fp32 values agree to ~1e-6, then one rounding) and relative L2 < 4e-3 (test_model_ops' bound).
void expect_bf16_near(const std::vector<uint16_t>& got, int64_t stride, const std::vector<float>& ref,
                      int64_t num_tokens, int64_t hidden) {
    std::vector<float> g(ref.size());
    for (int64_t t = 0; t < num_tokens; ++t) {
        for (int64_t i = 0; i < hidden; ++i) {
            const float v = bf16_to_float(got[sz(t * stride + i)]);
            const float r = ref[sz(t * hidden + i)];
            ASSERT_LE(std::fabs(v - r), std::ldexp(std::fabs(r), -7)) << "token " << t << " element " << i;
            g[sz(t * hidden + i)] = v;
        }
    }
    if (num_tokens > 0) {
        EXPECT_LT(rel_l2(g, ref), 4e-3);
    }
}

// Every byte of `buf` outside rows [0, num_tokens) x [0, width) (row stride `stride`, `elem` bytes each) is 0xFF.
void expect_poisoned_outside(const std::vector<uint8_t>& buf, int64_t num_tokens, int64_t width, int64_t stride,
                             int elem) {
    for (size_t b = 0; b < buf.size(); ++b) {
        const auto e = static_cast<int64_t>(b) / elem;
        const bool owned = e / stride < num_tokens && e % stride < width;
        if (!owned) {
            ASSERT_EQ(buf[b], 0xFF) << "byte " << b << " outside the written rows";
        }
    }
}

// ---- rms_norm_quant with the bf16 output ----

struct FusedCase {
    int64_t hidden;
    int64_t num_tokens;
    bool residual;
    bool in_place;  // out_bf16 == x
};

// The fused kernel against rms_norm then fp8_quant on copies of the same inputs: residual, bf16 rows, e4m3 codes
// and scales all equal bit for bit (the fused kernel quantizes exactly the bf16 values it writes); the bf16 rows
// are also checked against cpu::rms_norm, and every byte outside the written rows keeps its poison.
void run_fused_case(const FusedCase& c, std::mt19937& rng) {
    SCOPED_TRACE("hidden " + std::to_string(c.hidden) + " tokens " + std::to_string(c.num_tokens) + " residual " +
                 std::to_string(c.residual) + " in_place " + std::to_string(c.in_place));
    const int64_t x_stride = c.hidden + 64;
    const int64_t bf16_stride = c.in_place ? x_stride : c.hidden + 128;
    const int64_t q_stride = c.hidden + 16;
    const int64_t scale_stride = c.num_tokens + 2;
    const int64_t groups = c.hidden / 128;
    const auto x = random_bf16(sz(c.num_tokens * x_stride), rng, 2.0f);
    const auto residual = random_bf16(sz(c.num_tokens * c.hidden), rng, 2.0f);
    const auto weight = random_bf16(sz(c.hidden), rng, 0.5f);
    const auto w_dev = to_device(weight);
    struct Outputs {
        cuda::DeviceBuffer x, res, bf16, q, scale;
    };
    auto make = [&]() {
        Outputs o{to_device(x), to_device(residual), cuda::DeviceBuffer(sz(c.num_tokens * bf16_stride) * 2 + 2),
                  cuda::DeviceBuffer(sz(c.num_tokens * q_stride) + 1), cuda::DeviceBuffer(sz(groups * scale_stride) * 4)};
        o.bf16.fill_bytes(0xFF);
        o.q.fill_bytes(0xFF);
        o.scale.fill_bytes(0xFF);
        return o;
    };
    Outputs fused = make();
    Outputs pair = make();
    auto bf16_of = [&](Outputs& o) { return c.in_place ? o.x.as<uint16_t>() : o.bf16.as<uint16_t>(); };

    cuda::RmsNormQuantParams f;
    f.x = fused.x.as<uint16_t>();
    f.residual = c.residual ? fused.res.as<uint16_t>() : nullptr;
    f.weight = w_dev.as<uint16_t>();
    f.out = fused.q.as<uint8_t>();
    f.out_scale = fused.scale.as<float>();
    f.num_tokens = c.num_tokens;
    f.hidden = c.hidden;
    f.x_stride = x_stride;
    f.out_stride = q_stride;
    f.scale_stride = scale_stride;
    f.out_bf16 = bf16_of(fused);
    f.out_bf16_stride = bf16_stride;
    cuda::launch_rms_norm_quant(f, nullptr);

    cuda::RmsNormParams n;
    n.x = pair.x.as<uint16_t>();
    n.residual = c.residual ? pair.res.as<uint16_t>() : nullptr;
    n.weight = w_dev.as<uint16_t>();
    n.out = bf16_of(pair);
    n.num_tokens = c.num_tokens;
    n.hidden = c.hidden;
    n.x_stride = x_stride;
    n.out_stride = bf16_stride;
    cuda::launch_rms_norm(n, nullptr);
    cuda::Fp8QuantParams q;
    q.x = bf16_of(pair);
    q.out = pair.q.as<uint8_t>();
    q.out_scale = pair.scale.as<float>();
    q.num_tokens = c.num_tokens;
    q.hidden = c.hidden;
    q.x_stride = bf16_stride;
    q.out_stride = q_stride;
    q.scale_stride = scale_stride;
    cuda::launch_fp8_quant(q, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());

    auto bytes = [](const cuda::DeviceBuffer& b) { return to_host<uint8_t>(b, b.num_bytes()); };
    EXPECT_EQ(bytes(fused.res), bytes(pair.res)) << "residual";
    const auto& fused_rows = c.in_place ? fused.x : fused.bf16;
    EXPECT_EQ(bytes(fused_rows), bytes(c.in_place ? pair.x : pair.bf16)) << "bf16 rows";
    EXPECT_EQ(bytes(fused.q), bytes(pair.q)) << "e4m3 codes";
    EXPECT_EQ(bytes(fused.scale), bytes(pair.scale)) << "scales";
    if (!c.in_place)
        expect_poisoned_outside(bytes(fused.bf16), c.num_tokens, c.hidden, bf16_stride, 2);
    expect_poisoned_outside(bytes(fused.q), c.num_tokens, c.hidden, q_stride, 1);
    expect_poisoned_outside(bytes(fused.scale), groups, c.num_tokens, scale_stride, 4);

    const auto ref = host_rms_norm(x, x_stride, c.residual ? &residual : nullptr, weight, c.num_tokens, c.hidden);
    expect_bf16_near(to_host<uint16_t>(fused_rows, fused_rows.num_bytes() / 2), bf16_stride, ref, c.num_tokens, c.hidden);
}

TEST_F(CudaSmallOps, RmsNormQuantBf16OutEqualsNormThenQuant) {
    std::mt19937 rng(71);
    // 7168 Kimi hidden, 1536 q_a_norm, 512 kv_a_norm, 128 one group; 16384: two chunks per thread.
    for (const int64_t hidden : {7168, 1536, 512, 128, 16384}) {
        for (const int64_t num_tokens : {0, 1, 3, 16, 33}) {
            for (const bool residual : {false, true}) {
                for (const bool in_place : {false, true}) {
                    run_fused_case({hidden, num_tokens, residual, in_place}, rng);
                }
            }
        }
    }
}

// Many rows take another block shape (128 threads, row_norm_shape): fused and pair still agree bit for bit there.
TEST_F(CudaSmallOps, RmsNormQuantBf16OutManyRows) {
    std::mt19937 rng(78);
    for (const int64_t hidden : {7168, 1536}) {
        run_fused_case({hidden, 400, true, false}, rng);
        run_fused_case({hidden, 400, false, true}, rng);
    }
}

// A row's result does not depend on the batch it is in: the first rows of a 400-row batch (the many-row shape)
// equal the same rows normalized as a batch of 3 (the decode shape), bit for bit, for rms_norm (bf16 rows and
// residual) and rms_norm_quant (codes and scales). Widths: 7168 (8 chunks per thread vs 1), 4096 (4 vs 1),
// 1536 (2 vs 1), 100 (element-wise, one shape).
TEST_F(CudaSmallOps, RmsNormBatchInvariant) {
    std::mt19937 rng(79);
    for (const int64_t hidden : {7168, 4096, 1536, 100}) {
        SCOPED_TRACE("hidden " + std::to_string(hidden));
        constexpr int64_t kMany = 400;
        constexpr int64_t kFew = 3;
        const auto x = random_bf16(sz(kMany * hidden), rng, 2.0f);
        const auto residual = random_bf16(sz(kMany * hidden), rng, 2.0f);
        const auto weight = random_bf16(sz(hidden), rng, 0.5f);
        const auto x_dev = to_device(x);
        const auto w_dev = to_device(weight);
        std::vector<uint16_t> rows[2];
        std::vector<uint16_t> res[2];
        for (int run = 0; run < 2; ++run) {
            const int64_t t = run == 0 ? kMany : kFew;
            auto res_dev = to_device(residual);
            cuda::DeviceBuffer out_dev(sz(kMany * hidden) * 2);
            out_dev.fill_bytes(0xFF);
            cuda::RmsNormParams p;
            p.x = x_dev.as<uint16_t>();
            p.residual = res_dev.as<uint16_t>();
            p.weight = w_dev.as<uint16_t>();
            p.out = out_dev.as<uint16_t>();
            p.num_tokens = t;
            p.hidden = hidden;
            p.x_stride = hidden;
            p.out_stride = hidden;
            cuda::launch_rms_norm(p, nullptr);
            CUDA_CHECK(cudaDeviceSynchronize());
            rows[run] = to_host<uint16_t>(out_dev, sz(kFew * hidden));
            res[run] = to_host<uint16_t>(res_dev, sz(kFew * hidden));
        }
        EXPECT_EQ(rows[0], rows[1]) << "rms_norm rows differ between a batch of 400 and of 3";
        EXPECT_EQ(res[0], res[1]) << "residual rows differ";
        if (hidden % 128 != 0)
            continue;
        std::vector<uint8_t> codes[2];
        std::vector<float> scales[2];
        const int64_t groups = hidden / 128;
        for (int run = 0; run < 2; ++run) {
            const int64_t t = run == 0 ? kMany : kFew;
            cuda::DeviceBuffer q_dev(sz(kMany * hidden));
            cuda::DeviceBuffer s_dev(sz(groups * kMany) * 4);
            cuda::RmsNormQuantParams p;
            p.x = x_dev.as<uint16_t>();
            p.weight = w_dev.as<uint16_t>();
            p.out = q_dev.as<uint8_t>();
            p.out_scale = s_dev.as<float>();
            p.num_tokens = t;
            p.hidden = hidden;
            p.x_stride = hidden;
            p.out_stride = hidden;
            p.scale_stride = kMany;  // the same layout for both runs
            cuda::launch_rms_norm_quant(p, nullptr);
            CUDA_CHECK(cudaDeviceSynchronize());
            codes[run] = to_host<uint8_t>(q_dev, sz(kFew * hidden));
            const auto all = to_host<float>(s_dev, sz(groups * kMany));
            for (int64_t g = 0; g < groups; ++g)
                scales[run].insert(scales[run].end(), all.begin() + g * kMany, all.begin() + g * kMany + kFew);
        }
        EXPECT_EQ(codes[0], codes[1]) << "rms_norm_quant codes differ between a batch of 400 and of 3";
        EXPECT_EQ(scales[0], scales[1]) << "rms_norm_quant scales differ";
    }
}

// ---- wide rows: 2, 4 and 8 chunks per thread ----

// rms_norm at widths past one chunk per thread (8192): vec8 8200 / 16384 (2 chunks per thread), 24000 (4), 65536 (8)
// and element-wise 8191 (1, 1024 threads) / 39999 (8) with an odd stride, with and without the residual, against cpu::rms_norm
// (tolerance of expect_bf16_near).
TEST_F(CudaSmallOps, RmsNormWideRows) {
    std::mt19937 rng(72);
    for (const int64_t hidden : {8200, 16384, 24000, 65536, 8191, 39999}) {
        for (const int64_t num_tokens : {1, 16}) {
            for (const bool with_residual : {false, true}) {
                SCOPED_TRACE("hidden " + std::to_string(hidden) + " tokens " + std::to_string(num_tokens));
                const int64_t x_stride = hidden % 8 == 0 ? hidden + 8 : hidden + 3;
                const auto x = random_bf16(sz(num_tokens * x_stride), rng, 2.0f);
                const auto residual = random_bf16(sz(num_tokens * hidden), rng, 2.0f);
                const auto weight = random_bf16(sz(hidden), rng, 0.5f);
                const auto x_dev = to_device(x);
                auto res_dev = to_device(residual);
                const auto w_dev = to_device(weight);
                cuda::DeviceBuffer out_dev(sz(num_tokens * x_stride) * 2);
                out_dev.fill_bytes(0xFF);
                cuda::RmsNormParams p;
                p.x = x_dev.as<uint16_t>();
                p.residual = with_residual ? res_dev.as<uint16_t>() : nullptr;
                p.weight = w_dev.as<uint16_t>();
                p.out = out_dev.as<uint16_t>();
                p.num_tokens = num_tokens;
                p.hidden = hidden;
                p.x_stride = x_stride;
                p.out_stride = x_stride;
                cuda::launch_rms_norm(p, nullptr);
                CUDA_CHECK(cudaDeviceSynchronize());
                const auto ref =
                    host_rms_norm(x, x_stride, with_residual ? &residual : nullptr, weight, num_tokens, hidden);
                const auto out = to_host<uint16_t>(out_dev, sz(num_tokens * x_stride));
                expect_bf16_near(out, x_stride, ref, num_tokens, hidden);
                expect_poisoned_outside(to_host<uint8_t>(out_dev, out_dev.num_bytes()), num_tokens, hidden, x_stride, 2);
            }
        }
    }
}

// rms_norm_quant at 16384 / 32768 / 65536 (2, 4, 8 chunks per thread) against a host quantization of cpu::rms_norm:
// each scale within 1e-4 relative of amax / 448 (the fp32 values agree to ~1e-6; 65536-term sums in another order
// may differ by more, and a wrong group's amax is off by far more), and the dequantized codes within relative L2
// 0.06 of the reference (e4m3's 3 mantissa bits: at most 2^-4 relative per element, ~3% RMS; a wrong group or
// element order lands near 1).
TEST_F(CudaSmallOps, RmsNormQuantWideRows) {
    std::mt19937 rng(73);
    for (const int64_t hidden : {16384, 32768, 65536}) {
        for (const int64_t num_tokens : {1, 16}) {
            SCOPED_TRACE("hidden " + std::to_string(hidden) + " tokens " + std::to_string(num_tokens));
            const int64_t groups = hidden / 128;
            const auto x = random_bf16(sz(num_tokens * hidden), rng, 2.0f);
            const auto weight = random_bf16(sz(hidden), rng, 0.5f);
            const auto x_dev = to_device(x);
            const auto w_dev = to_device(weight);
            cuda::DeviceBuffer q_dev(sz(num_tokens * hidden));
            cuda::DeviceBuffer s_dev(sz(groups * num_tokens) * 4);
            q_dev.fill_bytes(0xFF);
            s_dev.fill_bytes(0xFF);
            cuda::RmsNormQuantParams p;
            p.x = x_dev.as<uint16_t>();
            p.weight = w_dev.as<uint16_t>();
            p.out = q_dev.as<uint8_t>();
            p.out_scale = s_dev.as<float>();
            p.num_tokens = num_tokens;
            p.hidden = hidden;
            p.x_stride = hidden;
            p.out_stride = hidden;
            p.scale_stride = num_tokens;
            cuda::launch_rms_norm_quant(p, nullptr);
            CUDA_CHECK(cudaDeviceSynchronize());
            const auto ref = host_rms_norm(x, hidden, nullptr, weight, num_tokens, hidden);
            const auto q = to_host<uint8_t>(q_dev, sz(num_tokens * hidden));
            const auto s = to_host<float>(s_dev, sz(groups * num_tokens));
            std::vector<float> deq(ref.size());
            for (int64_t t = 0; t < num_tokens; ++t) {
                for (int64_t g = 0; g < groups; ++g) {
                    float amax = 0.0f;
                    for (int64_t i = g * 128; i < (g + 1) * 128; ++i)
                        amax = std::max(amax, std::fabs(ref[sz(t * hidden + i)]));
                    const float scale = s[sz(g * num_tokens + t)];
                    const float want = std::max(amax, 1e-10f) / 448.0f;
                    ASSERT_NEAR(scale, want, 1e-4f * want) << "token " << t << " group " << g;
                    for (int64_t i = g * 128; i < (g + 1) * 128; ++i)
                        deq[sz(t * hidden + i)] = fp8_e4m3_to_float(q[sz(t * hidden + i)]) * scale;
                }
            }
            EXPECT_LT(rel_l2(deq, ref), 0.06);
        }
    }
}

// ---- router, gather, combine, scale relayout: the same bits as before the rewrite ----

// Random top-k ids without repeats per token (what the router gives), and the permute of them on the GPU (the
// permute kernel is unchanged; test_moe_ops checks it against std::stable_sort).
struct Routed {
    std::vector<int32_t> ids;  // [num_tokens, top_k]
    cuda::DeviceBuffer offsets, row_token, pair_row;
    int64_t num_rows = 0;
};

Routed route_and_permute(int64_t num_tokens, int top_k, int num_experts, std::mt19937& rng) {
    Routed r;
    std::vector<int32_t> all(sz(num_experts));
    std::iota(all.begin(), all.end(), 0);
    for (int64_t t = 0; t < num_tokens; ++t) {
        std::shuffle(all.begin(), all.end(), rng);
        r.ids.insert(r.ids.end(), all.begin(), all.begin() + top_k);
    }
    r.num_rows = num_tokens * top_k;
    const auto ids_dev = to_device(r.ids);
    r.offsets = cuda::DeviceBuffer(sz(num_experts + 1) * 4);
    r.row_token = cuda::DeviceBuffer(sz(r.num_rows + 1) * 4);
    r.pair_row = cuda::DeviceBuffer(sz(r.num_rows + 1) * 4);
    cuda::MoePermuteParams p;
    p.topk_ids = ids_dev.as<int32_t>();
    p.offsets = r.offsets.as<int32_t>();
    p.row_token = r.row_token.as<int32_t>();
    p.pair_row = r.pair_row.as<int32_t>();
    p.num_tokens = num_tokens;
    p.top_k = top_k;
    p.num_experts = num_experts;
    cuda::launch_moe_permute(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    return r;
}

std::vector<uint8_t> bytes_of(const cuda::DeviceBuffer& b) { return to_host<uint8_t>(b, b.num_bytes()); }

// Both outputs poisoned, one launched by `now`, the other by `old`; every byte (the poisoned slack too) equal.
template <class Now, class Old>
void expect_same_bytes(cuda::DeviceBuffer& a, cuda::DeviceBuffer& b, Now&& now, Old&& old, const char* what) {
    a.fill_bytes(0xFF);
    b.fill_bytes(0xFF);
    now();
    CUDA_CHECK(old());
    CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_EQ(bytes_of(a), bytes_of(b)) << what;
}

void check_router_same(int64_t num_tokens, int experts, int n_group, int topk_group, int top_k, std::mt19937& rng) {
    SCOPED_TRACE("router experts " + std::to_string(experts) + " tokens " + std::to_string(num_tokens));
    // Logits on a coarse grid (multiples of 1/8) so that ties between experts occur and the tie rule is exercised.
    auto logits = random_uniform(sz(num_tokens * experts), rng, -4.0f, 4.0f);
    for (float& v : logits)
        v = std::round(v * 8.0f) / 8.0f;
    const auto bias = random_uniform(sz(experts), rng, -0.5f, 0.5f);
    const auto logits_dev = to_device(logits);
    const auto bias_dev = to_device(bias);
    cuda::DeviceBuffer ids[2] = {cuda::DeviceBuffer(sz(num_tokens * top_k + 1) * 4),
                                 cuda::DeviceBuffer(sz(num_tokens * top_k + 1) * 4)};
    cuda::DeviceBuffer weights[2] = {cuda::DeviceBuffer(sz(num_tokens * top_k + 1) * 4),
                                     cuda::DeviceBuffer(sz(num_tokens * top_k + 1) * 4)};
    auto params = [&](int i) {
        cuda::MoeRouterParams p;
        p.logits = logits_dev.as<float>();
        p.bias = bias_dev.as<float>();
        p.topk_ids = ids[i].as<int32_t>();
        p.topk_weights = weights[i].as<float>();
        p.num_tokens = num_tokens;
        p.num_experts = experts;
        p.n_group = n_group;
        p.topk_group = topk_group;
        p.top_k = top_k;
        p.routed_scaling_factor = 2.827f;
        return p;
    };
    weights[0].fill_bytes(0xFF);
    weights[1].fill_bytes(0xFF);
    expect_same_bytes(
        ids[0], ids[1], [&] { cuda::launch_moe_router(params(0), nullptr); },
        [&] { return cuda::before::launch_moe_router(params(1), nullptr); }, "topk ids");
    EXPECT_EQ(bytes_of(weights[0]), bytes_of(weights[1])) << "topk weights";
    if (num_tokens > 0) {
        EXPECT_EQ(to_host<int32_t>(ids[0], sz(num_tokens * top_k + 1)).back(), -1) << "wrote past the last token";
    }
}

TEST_F(CudaSmallOps, RouterSameBitsAsBefore) {
    std::mt19937 rng(74);
    for (const int64_t t : {1, 3, 16, 37, 256}) {
        check_router_same(t, 384, 1, 1, 8, rng);  // Kimi-K2
        check_router_same(t, 256, 8, 4, 8, rng);  // DeepSeek-V3
        check_router_same(t, 40, 4, 2, 5, rng);   // a warp's last slot partly empty
    }
}

// The permute (one batch per warp up to 4096 pairs keeps its ids in registers; past that the old walk) against
// its kernel before, with ids outside this rank's range (expert_begin 16) giving no row.
TEST_F(CudaSmallOps, PermuteSameBitsAsBefore) {
    std::mt19937 rng(77);
    for (const int64_t t : {1, 3, 16, 256, 511, 513, 4000}) {
        SCOPED_TRACE("permute tokens " + std::to_string(t));
        std::uniform_int_distribution<int32_t> pick(0, 399);
        std::vector<int32_t> ids(sz(t * 8));
        for (auto& id : ids)
            id = pick(rng);  // repeats allowed; ids < 16 or >= 400 - 16 fall outside [16, 16 + 368)
        const auto ids_dev = to_device(ids);
        cuda::DeviceBuffer out[2][3];
        for (auto& o : out) {
            o[0] = cuda::DeviceBuffer(sz(368 + 1 + 1) * 4);
            o[1] = cuda::DeviceBuffer(sz(t * 8 + 1) * 4);
            o[2] = cuda::DeviceBuffer(sz(t * 8 + 1) * 4);
            for (auto& b : o)
                b.fill_bytes(0x7F);
        }
        auto params = [&](int i) {
            cuda::MoePermuteParams p;
            p.topk_ids = ids_dev.as<int32_t>();
            p.offsets = out[i][0].as<int32_t>();
            p.row_token = out[i][1].as<int32_t>();
            p.pair_row = out[i][2].as<int32_t>();
            p.num_tokens = t;
            p.top_k = 8;
            p.num_experts = 368;
            p.expert_begin = 16;
            return p;
        };
        cuda::launch_moe_permute(params(0), nullptr);
        CUDA_CHECK(cuda::before::launch_moe_permute(params(1), nullptr));
        CUDA_CHECK(cudaDeviceSynchronize());
        EXPECT_EQ(bytes_of(out[0][0]), bytes_of(out[1][0])) << "offsets";
        EXPECT_EQ(bytes_of(out[0][1]), bytes_of(out[1][1])) << "row_token";
        EXPECT_EQ(bytes_of(out[0][2]), bytes_of(out[1][2])) << "pair_row";
    }
}

TEST_F(CudaSmallOps, GatherAndScaleLayoutSameBitsAsBefore) {
    std::mt19937 rng(75);
    for (const int64_t t : {1, 3, 16, 256}) {
        for (const int64_t k : {7168, 2048, 384}) {
            SCOPED_TRACE("tokens " + std::to_string(t) + " k " + std::to_string(k));
            const int experts = 384;
            const Routed r = route_and_permute(t, 8, experts, rng);
            const int64_t groups = k / 128;
            const int64_t scale_stride = t + 3;
            const auto x_dev = to_device(random_fp8(sz(t * k), rng));
            const auto xs_dev = to_device(random_uniform(sz(groups * scale_stride), rng, 1e-3f, 1.0f));
            cuda::DeviceBuffer out[2] = {cuda::DeviceBuffer(sz((r.num_rows + 1) * k)),
                                         cuda::DeviceBuffer(sz((r.num_rows + 1) * k))};
            cuda::DeviceBuffer scale[2] = {cuda::DeviceBuffer(sz((r.num_rows + 1) * groups) * 4),
                                           cuda::DeviceBuffer(sz((r.num_rows + 1) * groups) * 4)};
            auto gather = [&](int i) {
                cuda::MoeGatherParams p;
                p.x = x_dev.as<uint8_t>();
                p.x_scale = xs_dev.as<float>();
                p.row_token = r.row_token.as<int32_t>();
                p.offsets = r.offsets.as<int32_t>();
                p.out = out[i].as<uint8_t>();
                p.out_scale = scale[i].as<float>();
                p.num_rows = r.num_rows;
                p.k = k;
                p.x_scale_stride = scale_stride;
                p.num_experts = experts;
                return p;
            };
            scale[0].fill_bytes(0xFF);
            scale[1].fill_bytes(0xFF);
            expect_same_bytes(
                out[0], out[1], [&] { cuda::launch_moe_gather(gather(0), nullptr); },
                [&] { return cuda::before::launch_moe_gather(gather(1), nullptr); }, "gathered rows");
            EXPECT_EQ(bytes_of(scale[0]), bytes_of(scale[1])) << "gathered scales";

            // The scale relayout of P token-contiguous rows (silu_mul_quant's output) into expert blocks.
            const auto flat_dev = to_device(random_uniform(sz(groups * r.num_rows), rng, 1e-3f, 1.0f));
            auto layout = [&](int i) {
                cuda::MoeScaleLayoutParams p;
                p.scale = flat_dev.as<float>();
                p.offsets = r.offsets.as<int32_t>();
                p.out = scale[i].as<float>();
                p.num_rows = r.num_rows;
                p.num_groups = groups;
                p.num_experts = experts;
                return p;
            };
            expect_same_bytes(
                scale[0], scale[1], [&] { cuda::launch_moe_scales_to_expert_blocked(layout(0), nullptr); },
                [&] { return cuda::before::launch_moe_scales_to_expert_blocked(layout(1), nullptr); },
                "expert-blocked scales");
        }
    }
}

TEST_F(CudaSmallOps, CombineSameBitsAsBefore) {
    std::mt19937 rng(76);
    for (const int64_t t : {1, 3, 16, 256}) {
        for (const int top_k : {8, 4, 11}) {  // 11: one full batch of 8 and a partial one
            for (const int64_t hidden : {7168, 264}) {
                for (const bool with_shared : {true, false}) {
                    SCOPED_TRACE("tokens " + std::to_string(t) + " top_k " + std::to_string(top_k) + " hidden " +
                                 std::to_string(hidden) + " shared " + std::to_string(with_shared));
                    const Routed r = route_and_permute(t, top_k, 384, rng);
                    // A few pairs without a row (an invalid expert id under EP): row -1 must add nothing.
                    auto pair_row = to_host<int32_t>(r.pair_row, sz(r.num_rows));
                    for (size_t i = 0; i < pair_row.size(); i += 7)
                        pair_row[i] = -1;
                    const auto pair_row_dev = to_device(pair_row);
                    const auto y_dev = to_device(random_bf16(sz(r.num_rows * hidden), rng));
                    const auto w_dev = to_device(random_uniform(sz(r.num_rows), rng, 0.0f, 1.0f));
                    const auto shared_dev = to_device(random_bf16(sz(t * hidden), rng));
                    cuda::DeviceBuffer out[2] = {cuda::DeviceBuffer(sz((t + 1) * hidden) * 2),
                                                 cuda::DeviceBuffer(sz((t + 1) * hidden) * 2)};
                    auto params = [&](int i) {
                        cuda::MoeCombineParams p;
                        p.y = y_dev.as<uint16_t>();
                        p.pair_row = pair_row_dev.as<int32_t>();
                        p.topk_weights = w_dev.as<float>();
                        p.shared = with_shared ? shared_dev.as<uint16_t>() : nullptr;
                        p.out = out[i].as<uint16_t>();
                        p.num_tokens = t;
                        p.hidden = hidden;
                        p.top_k = top_k;
                        return p;
                    };
                    expect_same_bytes(
                        out[0], out[1], [&] { cuda::launch_moe_combine(params(0), nullptr); },
                        [&] { return cuda::before::launch_moe_combine(params(1), nullptr); }, "combined rows");
                    const auto bytes = bytes_of(out[0]);
                    for (size_t i = sz(t * hidden) * 2; i < bytes.size(); ++i)
                        ASSERT_EQ(bytes[i], 0xFF) << "out written past the last token";
                }
            }
        }
    }
}

// Empty batches are no-ops for the new option and every rewritten op (no launch, nothing written).
TEST_F(CudaSmallOps, EmptyBatches) {
    cuda::DeviceBuffer poison(64);
    poison.fill_bytes(0xFF);
    cuda::RmsNormQuantParams nq;
    nq.hidden = 7168;
    nq.out_bf16 = poison.as<uint16_t>();
    EXPECT_NO_THROW(cuda::launch_rms_norm_quant(nq, nullptr));
    cuda::RmsNormParams n;
    n.hidden = 7168;
    EXPECT_NO_THROW(cuda::launch_rms_norm(n, nullptr));
    cuda::MoeRouterParams rp;
    EXPECT_NO_THROW(cuda::launch_moe_router(rp, nullptr));
    cuda::MoeGatherParams gp;
    EXPECT_NO_THROW(cuda::launch_moe_gather(gp, nullptr));
    cuda::MoeCombineParams cp;
    EXPECT_NO_THROW(cuda::launch_moe_combine(cp, nullptr));
    cuda::MoeScaleLayoutParams lp;
    EXPECT_NO_THROW(cuda::launch_moe_scales_to_expert_blocked(lp, nullptr));
    CUDA_CHECK(cudaDeviceSynchronize());
    for (const uint8_t b : bytes_of(poison))
        ASSERT_EQ(b, 0xFF);
}

// The new bounds are checked before any launch (runs without a GPU: every case throws on the host).
TEST(SmallOpsValidation, RejectsBadParams) {
    auto* fake16 = reinterpret_cast<uint16_t*>(uintptr_t{1} << 20);  // aligned, never dereferenced
    auto* fake8 = reinterpret_cast<uint8_t*>(uintptr_t{1} << 21);
    auto* fakef = reinterpret_cast<float*>(uintptr_t{1} << 22);
    cuda::RmsNormQuantParams q;
    q.x = fake16;
    q.weight = fake16 + 65536;
    q.out = fake8;
    q.out_scale = fakef;
    q.num_tokens = 2;
    q.hidden = 7168;
    q.x_stride = 7168;
    q.out_stride = 7168;
    q.scale_stride = 2;
    q.out_bf16 = fake16 + 1;  // not 16-byte aligned
    q.out_bf16_stride = 7168;
    EXPECT_THROW(cuda::launch_rms_norm_quant(q, nullptr), Error);
    q.out_bf16 = fake16 + 8 * 7168;
    q.out_bf16_stride = 7000;  // < hidden
    EXPECT_THROW(cuda::launch_rms_norm_quant(q, nullptr), Error);
    q.out_bf16 = fake16;  // == x: in place with another stride
    q.out_bf16_stride = 7168 + 8;
    EXPECT_THROW(cuda::launch_rms_norm_quant(q, nullptr), Error);
    q.out_bf16 = nullptr;
    q.hidden = 65536 + 128;  // past one block's registers
    q.x_stride = q.hidden;
    q.out_stride = q.hidden;
    EXPECT_THROW(cuda::launch_rms_norm_quant(q, nullptr), Error);

    cuda::RmsNormParams n;
    n.x = fake16;
    n.weight = fake16;
    n.out = fake16 + 8;
    n.num_tokens = 1;
    n.hidden = 65537;
    n.x_stride = n.hidden;
    n.out_stride = n.hidden;
    EXPECT_THROW(cuda::launch_rms_norm(n, nullptr), Error);

    cuda::MoeGatherParams g;
    g.x = fake8;
    g.x_scale = fakef;
    g.row_token = reinterpret_cast<const int32_t*>(fakef);
    g.offsets = reinterpret_cast<const int32_t*>(fakef);
    g.out = fake8;
    g.out_scale = fakef;
    g.num_rows = 8;
    g.k = 128;
    g.x_scale_stride = 1;
    g.num_experts = 513;  // past the kernel's shared offsets
    EXPECT_THROW(cuda::launch_moe_gather(g, nullptr), Error);

    cuda::MoeScaleLayoutParams l;
    l.scale = fakef;
    l.offsets = reinterpret_cast<const int32_t*>(fakef);
    l.out = fakef;
    l.num_rows = 8;
    l.num_groups = 2;
    l.num_experts = 513;
    EXPECT_THROW(cuda::launch_moe_scales_to_expert_blocked(l, nullptr), Error);
}

}  // namespace
}  // namespace k2::ops_test

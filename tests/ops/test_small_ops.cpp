// The small decode ops after their rewrite for batch 16 (bench/small_ops.sh, docs/perf/small-ops.md):
// - rms_norm_quant's optional bf16 output (RmsNormQuantParams::out_bf16) against launch_rms_norm followed by
//   launch_fp8_quant, bit for bit, and its bf16 rows against cpu::rms_norm;
// - the norms at widths that take 2, 4 or 8 chunks per thread (hidden > 8192) against cpu::rms_norm and a host
//   quantization;
// - the rewritten router, permute, gather, combine and scale relayout keep their CPU-reference tests
//   (test_backend_ops MoeRouter, test_moe_ops); at git 3c92f03 this file also held them bit for bit against the
//   kernels before the rewrite, which they matched.
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

namespace k2::ops_test {
namespace {

size_t sz(int64_t n) {
    return static_cast<size_t>(n);
}

class CudaSmallOps : public ::testing::Test {
protected:
    void SetUp() override {
        if (cuda::cuda_device_count() == 0) {
            GTEST_SKIP() << "no CUDA device: the CUDA op tests need a GPU (run them on the H200)";
        }
    }
};

// cpu::rms_norm over the bf16 inputs (x, or bf16(x + residual) as the residual output holds it).
std::vector<float> host_rms_norm(const std::vector<uint16_t>& x, int64_t x_stride,
                                 const std::vector<uint16_t>* residual, const std::vector<uint16_t>& weight,
                                 int64_t num_tokens, int64_t hidden) {
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
                  cuda::DeviceBuffer(sz(c.num_tokens * q_stride) + 1),
                  cuda::DeviceBuffer(sz(groups * scale_stride) * 4)};
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
    expect_bf16_near(to_host<uint16_t>(fused_rows, fused_rows.num_bytes() / 2), bf16_stride, ref, c.num_tokens,
                     c.hidden);
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
// and element-wise 8191 (1, 1024 threads) / 39999 (8) with an odd stride, with and without the residual, against
// cpu::rms_norm (tolerance of expect_bf16_near).
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
                expect_poisoned_outside(to_host<uint8_t>(out_dev, out_dev.num_bytes()), num_tokens, hidden, x_stride,
                                        2);
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

std::vector<uint8_t> bytes_of(const cuda::DeviceBuffer& b) {
    return to_host<uint8_t>(b, b.num_bytes());
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

// CPU reference ops against values derived by hand or quoted from reference/kimi_k2.md (not from our code).
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <vector>

#include "backend/cpu/activation.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/embedding.h"
#include "backend/cpu/linear.h"
#include "backend/cpu/moe_router.h"
#include "backend/cpu/norm.h"
#include "backend/cpu/rope.h"

namespace k2::cpu {
namespace {

constexpr uint8_t kE4M3One = 0x38;       // 1.0: exponent 7 (bias 7), mantissa 0
constexpr uint8_t kE4M3Two = 0x40;       // 2.0
constexpr uint8_t kE4M3MinusOne = 0xB8;  // -1.0

YarnParams kimi_yarn(double factor) {
    YarnParams p;
    p.yarn = true;
    p.factor = factor;
    p.beta_fast = 1.0;
    p.beta_slow = 1.0;
    p.mscale = 1.0;
    p.mscale_all_dim = 1.0;
    p.original_max_position_embeddings = 4096;
    return p;
}

// reference/kimi_k2.md §3.5: K2 (theta 50000, beta 1/1) has a hard step at channel 20.
TEST(CpuRope, KimiYarnTableMatchesTheReference) {
    const std::vector<float> f32 = yarn_inv_freq(64, 50000.0, kimi_yarn(32.0));
    ASSERT_EQ(f32.size(), 32u);
    EXPECT_FLOAT_EQ(f32[0], 1.0f);
    EXPECT_NEAR(f32[19], 1.62176e-3, 1e-4 * 1.62176e-3);
    EXPECT_NEAR(f32[20], 3.61405e-5, 1e-4 * 3.61405e-5);
    EXPECT_NEAR(f32[31], 8.76441e-7, 1e-4 * 8.76441e-7);
    const std::vector<float> f64 = yarn_inv_freq(64, 50000.0, kimi_yarn(64.0));
    EXPECT_NEAR(f64[20], 1.80702e-5, 1e-4 * 1.80702e-5);
    EXPECT_FLOAT_EQ(yarn_cos_sin_scale(kimi_yarn(32.0)), 1.0f);
}

// DeepSeek-V3 (theta 10000, factor 40, beta_fast 32): channels < 10 keep theta^(-2i/d), channels >= 23 are / 40.
TEST(CpuRope, DeepseekYarnBlendsBetweenTenAndTwentyThree) {
    YarnParams p = kimi_yarn(40.0);
    p.beta_fast = 32.0;
    const std::vector<float> f = yarn_inv_freq(64, 10000.0, p);
    for (int i = 0; i < 32; ++i) {
        const double base = std::pow(10000.0, -2.0 * i / 64.0);
        if (i <= 10) {
            EXPECT_NEAR(f[i], base, 1e-5 * base) << i;
        }
        if (i >= 23) {
            EXPECT_NEAR(f[i], base / 40.0, 1e-5 * base / 40.0) << i;
        }
        if (i > 10 && i < 23) {
            EXPECT_LT(f[i], base) << i;
            EXPECT_GT(f[i], base / 40.0) << i;
        }
    }
}

TEST(CpuRope, RotatesInterleavedPairs) {
    std::vector<float> x = {1.0f, 0.0f, 0.0f, 1.0f};  // [1 token, 1 head, 4]
    const std::vector<float> inv_freq = {static_cast<float>(std::numbers::pi / 2),
                                         static_cast<float>(std::numbers::pi)};
    const int32_t pos = 1;
    rope_interleaved(x.data(), 1, 1, 4, 4, 4, &pos, inv_freq.data());
    EXPECT_NEAR(x[0], 0.0f, 1e-6f);  // (1, 0) by 90 degrees
    EXPECT_NEAR(x[1], 1.0f, 1e-6f);
    EXPECT_NEAR(x[2], 0.0f, 1e-6f);  // (0, 1) by 180 degrees
    EXPECT_NEAR(x[3], -1.0f, 1e-6f);
}

TEST(CpuLinear, Fp8BlockScalesIncludingPartialRowBlocks) {
    // W [130, 3], every row (1, 2, -1); scale_inv [2, 1] = (0.5, 2.0): rows 0..127 x0.5, rows 128..129 x2.
    std::vector<uint8_t> w(130 * 3);
    for (int r = 0; r < 130; ++r) {
        w[r * 3 + 0] = kE4M3One;
        w[r * 3 + 1] = kE4M3Two;
        w[r * 3 + 2] = kE4M3MinusOne;
    }
    std::vector<float> s = {0.5f, 2.0f};
    const Tensor weight = Tensor::view(DType::F8_E4M3, {130, 3}, w.data());
    const Tensor scale = Tensor::view(DType::F32, {2, 1}, s.data());
    const std::vector<float> x = {1, 1, 1, 2, 0, 1};  // [2, 3]: dots 2 and 1
    std::vector<float> y(2 * 130);
    linear(x.data(), 2, 3, weight, &scale, y.data());
    EXPECT_FLOAT_EQ(y[0], 1.0f);
    EXPECT_FLOAT_EQ(y[127], 1.0f);
    EXPECT_FLOAT_EQ(y[128], 4.0f);
    EXPECT_FLOAT_EQ(y[130 + 5], 0.5f);
    EXPECT_FLOAT_EQ(y[130 + 129], 2.0f);
}

TEST(CpuLinear, Fp8PartialColumnBlockAndScaleShapeCheck) {
    std::vector<uint8_t> w(130, kE4M3One);  // W [1, 130]
    std::vector<float> s = {1.0f, 3.0f};    // columns 0..127 x1, 128..129 x3
    const Tensor weight = Tensor::view(DType::F8_E4M3, {1, 130}, w.data());
    const Tensor scale = Tensor::view(DType::F32, {1, 2}, s.data());
    const std::vector<float> x(130, 1.0f);
    float y = 0.0f;
    linear(x.data(), 1, 130, weight, &scale, &y);
    EXPECT_FLOAT_EQ(y, 128.0f + 2 * 3.0f);
    const Tensor bad_scale = Tensor::view(DType::F32, {1, 1}, s.data());
    EXPECT_THROW(linear(x.data(), 1, 130, weight, &bad_scale, &y), Error);
    EXPECT_THROW(linear(x.data(), 1, 130, weight, nullptr, &y), Error);
}

TEST(CpuLinear, Bf16Weights) {
    std::vector<uint16_t> w = {0x3F80, 0x4000, 0xBF80, 0x3F00};  // [2, 2] = (1, 2), (-1, 0.5)
    const Tensor weight = Tensor::view(DType::BF16, {2, 2}, w.data());
    const std::vector<float> x = {3, 4};
    std::vector<float> y(2);
    linear(x.data(), 1, 2, weight, nullptr, y.data());
    EXPECT_FLOAT_EQ(y[0], 11.0f);
    EXPECT_FLOAT_EQ(y[1], -1.0f);
}

TEST(CpuNorm, RmsNormWithStride) {
    std::vector<float> x = {3, 4, 99};  // one row of dim 2 inside a stride of 3
    std::vector<float> w = {1.0f, 2.0f};
    const Tensor weight = Tensor::view(DType::F32, {2}, w.data());
    rms_norm(x.data(), 1, 2, 3, weight, 0.0f, x.data(), 3);
    const float rms = std::sqrt(12.5f);
    EXPECT_FLOAT_EQ(x[0], 3 / rms);
    EXPECT_FLOAT_EQ(x[1], 2 * 4 / rms);
    EXPECT_EQ(x[2], 99.0f);
}

TEST(CpuActivation, SiluMul) {
    const std::vector<float> g = {1.0f, 0.0f};
    const std::vector<float> u = {2.0f, 5.0f};
    std::vector<float> out(2);
    silu_mul(g.data(), u.data(), 2, out.data());
    EXPECT_NEAR(out[0], 2.0 / (1.0 + std::exp(-1.0)), 1e-6);
    EXPECT_EQ(out[1], 0.0f);
}

TEST(CpuEmbedding, RejectsOutOfRangeIds) {
    std::vector<uint16_t> table = {0x3F80, 0x4000};  // [2, 1]
    const Tensor t = Tensor::view(DType::BF16, {2, 1}, table.data());
    const int32_t ids[2] = {1, 0};
    float out[2];
    embedding(t, ids, 2, out);
    EXPECT_EQ(out[0], 2.0f);
    EXPECT_EQ(out[1], 1.0f);
    const int32_t bad = 2;
    EXPECT_THROW(embedding(t, &bad, 1, out), Error);
}

// transformers fills experts of dropped groups with 0.0 (not -inf) before the top-k, so a dropped expert
// can beat a kept one whose biased score is negative.
TEST(CpuMoeRouter, MaskedGroupsScoreZeroNotMinusInfinity) {
    const std::vector<float> logits = {0, 0, 0, static_cast<float>(std::log(3.0)), 0, 0};  // sigmoid .5 .5 .5 .75 .5 .5
    const std::vector<float> bias = {0.4f, 0.4f, -0.7f, 0.05f, 0.3f, 0.3f};  // choice .9 .9 -.2 | .8 .8 .8
    std::vector<int32_t> ids(3);
    std::vector<float> weights(3);
    MoeRouterArgs a;
    a.router_logits = logits.data();
    a.correction_bias = bias.data();
    a.num_tokens = 1;
    a.num_experts = 6;
    a.n_group = 2;  // group sums of the top 2: 1.8 vs 1.6, so group 0 is kept
    a.topk_group = 1;
    a.top_k = 3;
    a.routed_scaling_factor = 2.0f;
    a.topk_ids = ids.data();
    a.topk_weights = weights.data();
    moe_route(a);
    EXPECT_EQ(ids[0], 0);
    EXPECT_EQ(ids[1], 1);
    EXPECT_EQ(ids[2], 3);  // a masked 0.0 (lowest index among the tied) beats expert 2's -0.2
    EXPECT_NEAR(weights[0], 0.5 / 1.75 * 2.0, 1e-6);  // un-biased scores, normalized, scaled
    EXPECT_NEAR(weights[2], 0.75 / 1.75 * 2.0, 1e-6);
}

TEST(CpuMoeRouter, BiasSelectsButDoesNotWeight) {
    const std::vector<float> logits = {2.0f, 0.0f, -1.0f};
    const std::vector<float> bias = {-1.0f, 0.0f, 1.0f};  // choice .88-1, .5, .27+1: picks 2 then 1
    std::vector<int32_t> ids(2);
    std::vector<float> weights(2);
    MoeRouterArgs a;
    a.router_logits = logits.data();
    a.correction_bias = bias.data();
    a.num_tokens = 1;
    a.num_experts = 3;
    a.top_k = 2;
    a.norm_topk_prob = false;
    a.routed_scaling_factor = 1.5f;
    a.topk_ids = ids.data();
    a.topk_weights = weights.data();
    moe_route(a);
    EXPECT_EQ(ids[0], 2);
    EXPECT_EQ(ids[1], 1);
    EXPECT_NEAR(weights[0], 1.5 / (1.0 + std::exp(1.0)), 1e-6);
    EXPECT_NEAR(weights[1], 0.75, 1e-6);
}

// Block size 2, the sequence on blocks (1, 0): position 0 -> slot 2, position 1 -> slot 3, position 2 -> slot 0.
TEST(CpuAttention, PagedCausalAbsorbedAttention) {
    const int64_t lat = 2;
    const int64_t rope = 2;
    std::vector<float> cache(4 * 4, -100.0f);                                 // [4 slots, 4]
    const std::vector<float> entries = {1, 0, 0, 0, 0, 1, 0, 0, 3, 3, 0, 0};  // positions 0, 1, 2
    const std::vector<int64_t> slots = {2, 3, 0};
    LatentCacheView view{cache.data(), DType::F32, 4, lat + rope, 1.0f};
    write_latent_cache(entries.data(), 3, slots.data(), view);
    // Query at position 1 with q = 0: equal weights over positions 0 and 1; position 2 is in the future.
    // Query at position 2 with a large score on position 2's first channel: output = its latent.
    const std::vector<float> q = {0, 0, 0, 0, 100, 0, 0, 0};  // [2 tokens, 1 head, 4]
    const std::vector<int32_t> positions = {1, 2};
    const std::vector<int32_t> table = {1, 0};
    const std::vector<int32_t> query_start = {0, 2};
    std::vector<float> out(2 * lat);
    MlaAttentionArgs a;
    a.q = q.data();
    a.num_tokens = 2;
    a.num_heads = 1;
    a.kv_lora_rank = lat;
    a.rope_dim = rope;
    a.cache = view;
    a.block_size = 2;
    a.block_tables = table.data();
    a.max_blocks_per_seq = 2;
    a.query_start = query_start.data();
    a.num_seqs = 1;
    a.positions = positions.data();
    a.softmax_scale = 1.0f;
    a.out = out.data();
    mla_attention_absorbed(a);
    EXPECT_FLOAT_EQ(out[0], 0.5f);
    EXPECT_FLOAT_EQ(out[1], 0.5f);
    EXPECT_NEAR(out[2], 3.0f, 1e-5f);
    EXPECT_NEAR(out[3], 3.0f, 1e-5f);
}

TEST(CpuAttention, Bf16AndFp8CacheRoundTrip) {
    const std::vector<float> entry = {1.0f, -2.5f, 448.0f, 1000.0f};
    const int64_t slot = 0;
    std::vector<uint16_t> bf16(4);
    read_latent_entry({bf16.data(), DType::BF16, 1, 4, 1.0f}, 0, std::vector<float>(4).data());
    write_latent_cache(entry.data(), 1, &slot, {bf16.data(), DType::BF16, 1, 4, 1.0f});
    std::vector<float> back(4);
    read_latent_entry({bf16.data(), DType::BF16, 1, 4, 1.0f}, 0, back.data());
    EXPECT_EQ(back[1], -2.5f);
    EXPECT_EQ(back[3], 1000.0f);
    std::vector<uint8_t> fp8(4);
    write_latent_cache(entry.data(), 1, &slot, {fp8.data(), DType::F8_E4M3, 1, 4, 1.0f});
    read_latent_entry({fp8.data(), DType::F8_E4M3, 1, 4, 1.0f}, 0, back.data());
    EXPECT_EQ(back[0], 1.0f);
    EXPECT_EQ(back[1], -2.5f);   // 1.25 x 2^1 is exact in e4m3
    EXPECT_EQ(back[3], 448.0f);  // saturates at the e4m3 maximum
}

}  // namespace
}  // namespace k2::cpu

namespace k2::cpu {
namespace {

// Every e4m3 byte dequantizes as core's table-free reference conversion does (incl. subnormals, NaN).
TEST(CpuLinear, DequantizesAllFp8Codes) {
    std::vector<uint8_t> w(256);
    for (int i = 0; i < 256; ++i)
        w[static_cast<size_t>(i)] = static_cast<uint8_t>(i);
    std::vector<float> ones = {1.0f, 1.0f};
    const Tensor weight = Tensor::view(DType::F8_E4M3, {1, 256}, w.data());
    const Tensor scale = Tensor::view(DType::F32, {1, 2}, ones.data());
    std::vector<float> out(256);
    dequantize_row(weight, &scale, 0, out.data());
    for (int i = 0; i < 256; ++i) {
        const float ref = fp8_e4m3_to_float(static_cast<uint8_t>(i));
        if (std::isnan(ref)) {
            EXPECT_TRUE(std::isnan(out[static_cast<size_t>(i)])) << i;
        } else {
            EXPECT_EQ(out[static_cast<size_t>(i)], ref) << i;
        }
    }
    EXPECT_EQ(out[0x01], 0.001953125f);  // smallest subnormal: 2^-9
    EXPECT_EQ(out[0x7E], 448.0f);
}

}  // namespace
}  // namespace k2::cpu

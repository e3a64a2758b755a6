// config.json parsing against the fixture checkpoints and the facts of reference/kimi_k2.md.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "io/model_config.h"
#include "test_paths.h"

namespace k2 {
namespace {

TEST(ModelConfig, TinyKimiK2) {
    const ModelConfig c = load_model_config(fixture_path("tiny-kimi-k2"));
    EXPECT_EQ(c.model_type, "kimi_k2");
    EXPECT_EQ(c.hidden_size, 256);
    EXPECT_EQ(c.num_attention_heads, 4);
    EXPECT_EQ(c.n_routed_experts, 16);
    EXPECT_EQ(c.rope_scaling.type, "yarn");
    EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 32.0);
    EXPECT_TRUE(c.fp8_weights);
    EXPECT_TRUE(c.is_moe_layer(1));
    EXPECT_FALSE(c.is_moe_layer(0));
}

TEST(ModelConfig, SoftmaxScaleMatchesKimiK2Reference) {
    // Kimi-K2-0711: 192^-0.5 x mscale(32, 1)^2 = 0.130860800 (reference/kimi_k2.md §3.3).
    ModelConfig c;
    c.qk_nope_head_dim = 128;
    c.qk_rope_head_dim = 64;
    c.rope_scaling.type = "yarn";
    c.rope_scaling.factor = 32.0;
    c.rope_scaling.mscale_all_dim = 1.0;
    EXPECT_NEAR(c.softmax_scale(), 0.130860800, 1e-8);
    c.rope_scaling.factor = 64.0;  // K2-0905
    EXPECT_NEAR(c.softmax_scale(), 0.144679626, 1e-8);
}

TEST(ModelConfig, ErrorsNameTheKey) {
    const std::string base = R"({"vocab_size": 10, "hidden_size": 8, "intermediate_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 1, "kv_lora_rank": 4, "qk_nope_head_dim": 4,
        "qk_rope_head_dim": 4, "v_head_dim": 4)";
    EXPECT_NO_THROW(parse_model_config(base + "}", "config.json"));
    try {
        parse_model_config(base + R"(, "n_routed_experts": 6, "num_experts_per_tok": 2, "n_group": 4,
            "moe_intermediate_size": 4})", "config.json");
        FAIL() << "no throw";
    } catch (const Error& e) {
        EXPECT_NE(e.message().find("'n_group'"), std::string::npos) << e.message();
    }
    try {
        parse_model_config(R"({"vocab_size": 10})", "config.json");
        FAIL() << "no throw";
    } catch (const Error& e) {
        EXPECT_NE(e.message().find("'hidden_size'"), std::string::npos) << e.message();
    }
    EXPECT_THROW(parse_model_config("{not json", "config.json"), Error);
}

}  // namespace
}  // namespace k2

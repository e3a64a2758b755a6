// The expected tensor list against the two fixture checkpoints (written by reference tooling) and
// against Kimi-K2-Instruct's published totals (reference/kimi_k2.md §2.1).
#include <gtest/gtest.h>

#include <set>

#include "core/error.h"
#include "io/model_config.h"
#include "io/safetensors.h"
#include "io/synth.h"
#include "io_test_util.h"
#include "model/weight_schema.h"

namespace k2 {
namespace {

std::set<std::string> expected_names(const ModelConfig& config) {
    std::set<std::string> names;
    for (const ExpectedTensor& t : expected_tensors(config)) {
        names.insert(t.name);
        if (t.has_scale) {
            names.insert(scale_name(t.name));
        }
    }
    return names;
}

class FixtureSchema : public ::testing::TestWithParam<const char*> {};

TEST_P(FixtureSchema, MatchesCheckpointExactly) {
    const auto dir = fixture_path(GetParam());
    const ModelConfig config = load_model_config(dir);
    const Checkpoint ckpt = Checkpoint::open(dir);
    const auto names = ckpt.names();
    EXPECT_EQ(expected_names(config), std::set<std::string>(names.begin(), names.end()));
    const CheckpointReport report = check_checkpoint(ckpt, config);
    EXPECT_TRUE(report.errors.empty()) << report.errors.front();
    EXPECT_TRUE(report.unexpected.empty()) << report.unexpected.front();
    EXPECT_EQ(report.num_expected, names.size());
    EXPECT_TRUE(validate_checkpoint(ckpt, config).empty());
}

TEST_P(FixtureSchema, DtypesAndShapesMatchHeaders) {
    const auto dir = fixture_path(GetParam());
    const ModelConfig config = load_model_config(dir);
    const Checkpoint ckpt = Checkpoint::open(dir);
    for (const ExpectedTensor& t : expected_tensors(config)) {
        const TensorInfo& info = ckpt.info(t.name);
        EXPECT_EQ(info.dtype, t.dtype) << t.name;
        EXPECT_EQ(info.shape, t.shape) << t.name;
        if (t.has_scale) {
            EXPECT_EQ(ckpt.info(scale_name(t.name)).shape, scale_shape(t.shape, config)) << t.name;
            EXPECT_EQ(ckpt.info(scale_name(t.name)).dtype, DType::F32) << t.name;
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureSchema, ::testing::Values("tiny-kimi-k2", "small-dsv3"));

TEST(WeightSchema, KimiK2TotalsMatchTheReleasedCheckpoint) {
    const ModelConfig config = parse_model_config(kimi_k2_preset_config(std::nullopt, std::nullopt).dump(), "preset");
    size_t tensors = 0;
    int64_t elements = 0;
    for (const ExpectedTensor& t : expected_tensors(config)) {
        ++tensors;
        elements += shape_numel(t.shape);
        if (t.has_scale) {
            ++tensors;
            elements += shape_numel(scale_shape(t.shape, config));
        }
    }
    // K2-0711: 139,644 tensors and 1,026,470,731,056 elements, including 61 rotary_emb.inv_freq [56].
    EXPECT_EQ(tensors, 139'644u - 61u);
    EXPECT_EQ(elements, 1'026'470'731'056 - 61 * 56);
}

TEST(WeightSchema, KimiK2ShapesFromTheReference) {
    const ModelConfig config = parse_model_config(kimi_k2_preset_config(std::nullopt, std::nullopt).dump(), "preset");
    std::map<std::string, ExpectedTensor> by_name;
    for (ExpectedTensor& t : expected_tensors(config)) {
        by_name.emplace(t.name, std::move(t));
    }
    const auto check = [&](const std::string& name, std::vector<int64_t> shape, DType dtype,
                           std::vector<int64_t> scale) {
        ASSERT_EQ(by_name.count(name), 1u) << name;
        const ExpectedTensor& t = by_name.at(name);
        EXPECT_EQ(t.shape, shape) << name;
        EXPECT_EQ(t.dtype, dtype) << name;
        EXPECT_EQ(t.has_scale, !scale.empty()) << name;
        if (!scale.empty()) {
            EXPECT_EQ(scale_shape(t.shape, config), scale) << name;
        }
    };
    // reference/kimi_k2.md §2.2
    check("model.embed_tokens.weight", {163840, 7168}, DType::BF16, {});
    check("model.layers.0.self_attn.q_a_proj.weight", {1536, 7168}, DType::F8_E4M3, {12, 56});
    check("model.layers.0.self_attn.q_b_proj.weight", {12288, 1536}, DType::F8_E4M3, {96, 12});
    check("model.layers.5.self_attn.kv_a_proj_with_mqa.weight", {576, 7168}, DType::F8_E4M3, {5, 56});
    check("model.layers.60.self_attn.kv_b_proj.weight", {16384, 512}, DType::F8_E4M3, {128, 4});
    check("model.layers.0.self_attn.o_proj.weight", {7168, 8192}, DType::F8_E4M3, {56, 64});
    check("model.layers.0.mlp.gate_proj.weight", {18432, 7168}, DType::F8_E4M3, {144, 56});
    check("model.layers.0.mlp.down_proj.weight", {7168, 18432}, DType::F8_E4M3, {56, 144});
    check("model.layers.1.mlp.gate.weight", {384, 7168}, DType::BF16, {});
    check("model.layers.1.mlp.gate.e_score_correction_bias", {384}, DType::F32, {});
    check("model.layers.60.mlp.experts.383.up_proj.weight", {2048, 7168}, DType::F8_E4M3, {16, 56});
    check("model.layers.1.mlp.experts.0.down_proj.weight", {7168, 2048}, DType::F8_E4M3, {56, 16});
    check("model.layers.1.mlp.shared_experts.gate_proj.weight", {2048, 7168}, DType::F8_E4M3, {16, 56});
    check("model.norm.weight", {7168}, DType::BF16, {});
    check("lm_head.weight", {163840, 7168}, DType::BF16, {});
    EXPECT_EQ(by_name.count("model.layers.0.mlp.gate.weight"), 0u);
    EXPECT_EQ(by_name.count("model.layers.61.input_layernorm.weight"), 0u);
}

TEST(WeightSchema, NoQLoraAndUnquantizedVariants) {
    nlohmann::json c = test::read_json(fixture_path("small-dsv3") / "config.json");
    c["q_lora_rank"] = nullptr;
    c.erase("quantization_config");
    c["n_shared_experts"] = 2;
    const ModelConfig config = parse_model_config(c.dump(), "config.json");
    std::map<std::string, ExpectedTensor> by_name;
    for (ExpectedTensor& t : expected_tensors(config)) {
        EXPECT_FALSE(t.has_scale) << t.name;
        EXPECT_NE(t.dtype, DType::F8_E4M3) << t.name;
        by_name.emplace(t.name, std::move(t));
    }
    // 16 heads x (32 + 16), straight from hidden 384; shared experts 2 x 128 wide.
    EXPECT_EQ(by_name.at("model.layers.0.self_attn.q_proj.weight").shape, (std::vector<int64_t>{768, 384}));
    EXPECT_EQ(by_name.count("model.layers.0.self_attn.q_a_proj.weight"), 0u);
    EXPECT_EQ(by_name.at("model.layers.3.mlp.shared_experts.down_proj.weight").shape, (std::vector<int64_t>{384, 256}));
}

TEST(WeightSchema, IgnoresRotaryBuffersAndMtpLayers) {
    const ModelConfig config = load_model_config(fixture_path("tiny-kimi-k2"));
    EXPECT_TRUE(is_ignored_tensor("model.layers.0.self_attn.rotary_emb.inv_freq", config));
    EXPECT_TRUE(is_ignored_tensor("model.layers.3.embed_tokens.weight", config));  // MTP layer 3 of 3
    EXPECT_FALSE(is_ignored_tensor("model.layers.2.input_layernorm.weight", config));
    EXPECT_FALSE(is_ignored_tensor("model.norm.weight", config));
}

TEST(WeightSchema, ExtraTensorsAreWarningsNotErrors) {
    test::TempDir tmp;
    const auto dir = test::copy_fixture("tiny-kimi-k2", tmp.path());
    // Rename a scale-less norm into an MTP layer and add an unknown name: both via the header + index.
    test::RawShard raw = test::RawShard::load(dir / "model-00001-of-00002.safetensors");
    nlohmann::json index = test::read_json(dir / "model.safetensors.index.json");
    raw.header["model.layers.0.self_attn.rotary_emb.inv_freq"] = {
        {"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {raw.data.size(), raw.data.size() + 4}}};
    raw.header["model.layers.0.extra.weight"] = {
        {"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {raw.data.size() + 4, raw.data.size() + 8}}};
    raw.data += std::string(8, '\0');
    raw.save(dir / "model-00001-of-00002.safetensors");
    index["weight_map"]["model.layers.0.self_attn.rotary_emb.inv_freq"] = "model-00001-of-00002.safetensors";
    index["weight_map"]["model.layers.0.extra.weight"] = "model-00001-of-00002.safetensors";
    test::write_json(dir / "model.safetensors.index.json", index);
    const auto unexpected = validate_checkpoint(Checkpoint::open(dir), load_model_config(dir));
    EXPECT_EQ(unexpected, std::vector<std::string>{"model.layers.0.extra.weight"});
}

}  // namespace
}  // namespace k2

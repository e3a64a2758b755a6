// k2 synth: the planned Kimi-K2 checkpoint (without writing it) and a small written one, checked
// against the fixture files made by reference tooling and against the safetensors format rules.
#include <gtest/gtest.h>

#include <cmath>
#include <regex>

#include "io/model_config.h"
#include "io/safetensors.h"
#include "io/synth.h"
#include "io_test_util.h"
#include "model/weight_schema.h"

namespace k2 {
namespace {

TEST(SynthPlan, KimiK2PresetMatchesTheReleasedCheckpoint) {
    const ModelConfig config = parse_model_config(kimi_k2_preset_config(std::nullopt, std::nullopt).dump(), "preset");
    const SynthPlan plan = plan_synth(config, expected_tensors(config));
    EXPECT_EQ(plan.num_tensors, 139'644u - 61u);  // reference/kimi_k2.md §2.1, less 61 rotary_emb.inv_freq
    // "958.5 GB on disk" for K2-0711 is in GiB (1.026e12 elements, mostly 1-byte FP8).
    EXPECT_NEAR(static_cast<double>(plan.total_bytes) / (1 << 30), 958.5, 0.05);
    const std::regex name_re(R"(model-(\d{5})-of-(\d{5})\.safetensors)");
    std::set<std::string> names;
    uint64_t bytes = 0;
    for (size_t i = 0; i < plan.shards.size(); ++i) {
        const SynthShard& shard = plan.shards[i];
        std::smatch m;
        ASSERT_TRUE(std::regex_match(shard.file, m, name_re)) << shard.file;
        EXPECT_EQ(std::stoul(m[1]), i + 1);
        EXPECT_EQ(std::stoul(m[2]), plan.shards.size());
        EXPECT_LE(shard.bytes, kSynthShardBytes) << shard.file;
        for (const SynthTensor& t : shard.tensors) {
            EXPECT_TRUE(names.insert(t.name).second) << t.name;
            bytes += t.nbytes();
        }
    }
    EXPECT_EQ(bytes, plan.total_bytes);
    EXPECT_EQ(names.size(), plan.num_tensors);
    EXPECT_EQ(plan.shards.front().tensors.front().name, "model.embed_tokens.weight");
    EXPECT_EQ(plan.shards.back().tensors.back().name, "lm_head.weight");
}

TEST(SynthPlan, LayersAndExpertsOverrides) {
    const auto json = kimi_k2_preset_config(2, 8);
    EXPECT_EQ(json["num_hidden_layers"], 2);
    EXPECT_EQ(json["n_routed_experts"], 8);
    const ModelConfig config = parse_model_config(json.dump(), "preset");
    const SynthPlan plan = plan_synth(config, expected_tensors(config));
    // 3 + 2 x 14 norms/attention + 6 dense + (8 x 6 + 2 + 6) MoE, scales included (attention: 5 x 2 + 2 norms + 2).
    EXPECT_EQ(plan.num_tensors, 3u + 2u * 14u + 6u + (8u * 6u + 2u + 6u));
}

// A small Kimi-K2-format model: the tiny fixture's config with 2 layers and 4 experts.
nlohmann::json small_config() {
    nlohmann::json c = test::read_json(fixture_path("tiny-kimi-k2") / "config.json");
    c["num_hidden_layers"] = 2;
    c["n_routed_experts"] = 4;
    c["num_experts_per_tok"] = 2;
    return c;
}

void synth_small(const fs::path& out, uint64_t seed, uint64_t max_shard_bytes = 1'000'000) {
    const nlohmann::json json = small_config();
    const ModelConfig config = parse_model_config(json.dump(), "small");
    write_synth_model_files(json, config, out, default_tokenizer_sources());
    write_synth_weights(plan_synth(config, expected_tensors(config), max_shard_bytes), out, seed);
}

class SynthSmall : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        s_tmp = new test::TempDir();
        synth_small(s_tmp->path() / "a", 7);
    }
    static void TearDownTestSuite() {
        delete s_tmp;
        s_tmp = nullptr;
    }
    static fs::path dir() { return s_tmp->path() / "a"; }
    static test::TempDir* s_tmp;
};
test::TempDir* SynthSmall::s_tmp = nullptr;

TEST_F(SynthSmall, ValidatesWithNothingMissingOrExtra) {
    const Checkpoint ckpt = Checkpoint::open(dir());
    EXPECT_GT(ckpt.shard_files().size(), 3u);
    const CheckpointReport report = check_checkpoint(ckpt, load_model_config(dir()));
    EXPECT_TRUE(report.errors.empty()) << report.errors.front();
    EXPECT_TRUE(report.unexpected.empty()) << report.unexpected.front();
    EXPECT_EQ(report.num_expected, ckpt.names().size());
    uint64_t total = 0;
    for (const std::string& name : ckpt.names()) {
        total += ckpt.info(name).end - ckpt.info(name).begin;
    }
    EXPECT_EQ(test::read_json(dir() / "model.safetensors.index.json")["metadata"]["total_size"].get<uint64_t>(), total);
}

TEST_F(SynthSmall, HeadersAreAlignedAndMarkedPt) {
    for (const auto& entry : fs::directory_iterator(dir())) {
        if (entry.path().extension() != ".safetensors")
            continue;
        const std::string bytes = test::read_file(entry.path());
        uint64_t n = 0;
        std::memcpy(&n, bytes.data(), 8);
        EXPECT_EQ((8 + n) % 8, 0u) << entry.path();
        EXPECT_EQ(test::RawShard::load(entry.path()).header["__metadata__"]["format"], "pt");
    }
}

TEST_F(SynthSmall, TokenizerFilesMatchTheTinyFixture) {
    // Same vocab (4096 = 3840 ranks + 256 specials) as tests/fixtures/tiny-kimi-k2, made by reference tooling.
    const auto fixture = fixture_path("tiny-kimi-k2");
    EXPECT_EQ(test::read_file(dir() / "tiktoken.model"), test::read_file(fixture / "tiktoken.model"));
    const auto ours = test::read_json(dir() / "tokenizer_config.json");
    const auto theirs = test::read_json(fixture / "tokenizer_config.json");
    EXPECT_EQ(ours["added_tokens_decoder"], theirs["added_tokens_decoder"]);
    EXPECT_EQ(ours["additional_special_tokens"], theirs["additional_special_tokens"]);
    EXPECT_EQ(ours["tokenizer_class"], theirs["tokenizer_class"]);
    EXPECT_EQ(test::read_json(dir() / "config.json"), small_config());
    EXPECT_TRUE(fs::exists(dir() / "chat_template.jinja"));
}

// Dequantized FP8 weights: std ~ 1/sqrt(in); never a NaN code; norms exactly 1.
TEST_F(SynthSmall, ValuesHaveSaneMagnitudes) {
    const ModelConfig config = load_model_config(dir());
    const Checkpoint ckpt = Checkpoint::open(dir());
    double normalized_sum = 0.0;
    int num_fp8 = 0;
    for (const ExpectedTensor& t : expected_tensors(config)) {
        const Tensor w = ckpt.get(t.name);
        if (t.has_scale) {
            const Tensor s = ckpt.get(scale_name(t.name));
            const int64_t rows = t.shape[0], cols = t.shape[1], scols = s.dim(1);
            double sq = 0.0;
            for (int64_t r = 0; r < rows; ++r) {
                for (int64_t c = 0; c < cols; ++c) {
                    const uint8_t code = w.data_as<uint8_t>()[r * cols + c];
                    ASSERT_NE(code & 0x7f, 0x7f) << t.name;
                    const float v = fp8_e4m3_to_float(code) * s.data_as<float>()[(r / 128) * scols + c / 128];
                    sq += static_cast<double>(v) * v;
                }
            }
            // Per-block scales vary by U(0.5, 1.5), so a tensor of 2 blocks may sit anywhere in that band;
            // over all tensors the normalized mean square is ~1 (E[U^2] = 13/12).
            const double normalized = sq / static_cast<double>(rows * cols) * static_cast<double>(cols);
            EXPECT_GT(normalized, 0.25) << t.name;
            EXPECT_LT(normalized, 2.25) << t.name;
            normalized_sum += normalized;
            ++num_fp8;
        } else if (t.shape.size() == 1 && t.dtype == DType::BF16) {
            for (const uint16_t bits : w.span<const uint16_t>()) {
                ASSERT_EQ(bf16_to_float(bits), 1.0f) << t.name;
            }
        } else if (t.dtype == DType::F32) {
            for (const float v : w.span<const float>()) {
                ASSERT_LT(std::fabs(v), 0.1f) << t.name;  // router bias: small
            }
        }
    }
    ASSERT_GT(num_fp8, 20);
    EXPECT_NEAR(normalized_sum / num_fp8, 13.0 / 12.0, 0.1);
}

TEST_F(SynthSmall, DeterministicInTheSeed) {
    test::TempDir tmp;
    synth_small(tmp.path() / "same", 7, 3'000'000);  // other shard cut: values must not depend on it
    synth_small(tmp.path() / "other", 8, 3'000'000);
    const Checkpoint a = Checkpoint::open(dir());
    const Checkpoint same = Checkpoint::open(tmp.path() / "same");
    const Checkpoint other = Checkpoint::open(tmp.path() / "other");
    size_t differing = 0;
    for (const std::string& name : a.names()) {
        const Tensor x = a.get(name);
        const Tensor y = same.get(name);
        ASSERT_EQ(std::memcmp(x.data(), y.data(), x.nbytes()), 0) << name;
        const Tensor z = other.get(name);
        differing += std::memcmp(x.data(), z.data(), x.nbytes()) != 0 ? 1 : 0;
    }
    EXPECT_GT(differing, a.names().size() / 2);
}

}  // namespace
}  // namespace k2

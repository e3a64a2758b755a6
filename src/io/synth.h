// `k2 synth`: random-weight checkpoints in the exact Kimi-K2 format (block-FP8 e4m3 weights with F32
// weight_scale_inv, BF16 embeddings/norms/router/lm_head, F32 router bias, <= ~5 GB shards + index,
// tokenizer files). Everything is streamed to disk in small chunks: RAM use does not grow with size.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/model_config.h"
#include "model/weight_schema.h"  // ExpectedTensor only (a plain struct; no link dependency)

namespace k2 {

inline constexpr uint64_t kSynthShardBytes = 5'000'000'000;  // HF's default max_shard_size "5GB"

// How a tensor's elements are drawn; every element is independent, so chunks can be generated alone.
enum class SynthFill : uint8_t {
    Fp8Normal,  // e4m3 codes of N(0, kSynthFp8Sigma), never a NaN code (0x7f / 0xff)
    Scale,      // per-block scale_inv = std / kSynthFp8Sigma x U(0.5, 1.5): dequantized std ~= `std`
    Normal,     // N(0, std) in the tensor's float dtype
    Ones,       // RMSNorm weights
};
inline constexpr float kSynthFp8Sigma = 64.0f;  // spreads the codes over e4m3's range without saturating

struct SynthTensor {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    SynthFill fill;
    float std = 0.0f;  // target standard deviation of the (dequantized) values
    uint64_t nbytes() const;
};

struct SynthShard {
    std::string file;  // model-00001-of-0000N.safetensors
    std::vector<SynthTensor> tensors;
    uint64_t bytes = 0;  // data bytes (without the header)
};

struct SynthPlan {
    std::vector<SynthShard> shards;
    uint64_t total_bytes = 0;  // the index's metadata.total_size
    size_t num_tensors = 0;
};

// Kimi-K2-Instruct's config.json (reference/kimi_k2.md §1.1), optionally with fewer layers / experts.
nlohmann::json kimi_k2_preset_config(std::optional<int> num_layers, std::optional<int> num_experts);

// The tensors of `expected` (from expected_tensors(config)) plus their scales, cut into shards of at
// most `max_shard_bytes` (a weight and its scale stay together).
SynthPlan plan_synth(const ModelConfig& config, const std::vector<ExpectedTensor>& expected,
                     uint64_t max_shard_bytes = kSynthShardBytes);

// Writes the shards and model.safetensors.index.json into `out_dir`. Deterministic in `seed`: each
// tensor's values depend only on the seed and its name.
void write_synth_weights(const SynthPlan& plan, const std::filesystem::path& out_dir, uint64_t seed);

struct SynthTokenizerSources {
    std::filesystem::path tiktoken;       // e.g. tests/fixtures/tokenizer/kimi-o200k/tiktoken.model
    std::filesystem::path chat_template;  // optional: copied to chat_template.jinja when it exists
};
// The source files bundled with the repository (under K2_SOURCE_DIR, the env var or the build's).
SynthTokenizerSources default_tokenizer_sources();

// config.json (as given), generation_config.json, tokenizer_config.json with Kimi's special tokens at
// base + k where base = vocab_size - 256, tiktoken.model = the first `base` ranks of the source
// tiktoken file, and chat_template.jinja.
void write_synth_model_files(const nlohmann::json& config_json, const ModelConfig& config,
                             const std::filesystem::path& out_dir, const SynthTokenizerSources& sources);

}  // namespace k2

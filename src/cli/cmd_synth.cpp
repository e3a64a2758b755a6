// `k2 synth OUT_DIR --preset kimi-k2 [--layers N] [--experts E] | --config JSON`: a random-weight
// checkpoint in the exact Kimi-K2 format, written in streaming fashion (see io/synth.h).
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "io/model_config.h"
#include "io/synth.h"
#include "model/weight_schema.h"

namespace k2::cli {

namespace {

struct SynthArgs {
    std::string out_dir;
    std::string preset;
    std::string config;  // a config.json path, or inline JSON starting with '{'
    int layers = 0;
    int experts = 0;
    uint64_t seed = 0;
    std::string max_shard_size = "5GB";
    std::string tiktoken;
    bool dry_run = false;
};

// "5GB", "500MB", "123456" -> bytes (decimal units, as HF's max_shard_size).
uint64_t parse_size(const std::string& text) {
    size_t pos = 0;
    uint64_t value = 0;
    try {
        value = std::stoull(text, &pos);
    } catch (const std::exception&) {
        K2_FAIL("--max-shard-size '{}': expected a number of bytes, optionally with KB/MB/GB", text);
    }
    const std::string unit = text.substr(pos);
    const uint64_t mult = unit.empty() || unit == "B" ? 1
                          : unit == "KB"              ? 1000
                          : unit == "MB"              ? 1000'000
                          : unit == "GB"              ? 1000'000'000
                                                      : 0;
    K2_CHECK(mult != 0 && value > 0, "--max-shard-size '{}': expected a positive size like 5GB or 500MB", text);
    return value * mult;
}

nlohmann::json config_json_of(const SynthArgs& a, std::string& label) {
    if (!a.preset.empty()) {
        K2_CHECK(a.preset == "kimi-k2", "--preset '{}': unknown (known: kimi-k2)", a.preset);
        label = "preset kimi-k2";
        return kimi_k2_preset_config(a.layers > 0 ? std::optional<int>(a.layers) : std::nullopt,
                                     a.experts > 0 ? std::optional<int>(a.experts) : std::nullopt);
    }
    K2_CHECK(a.layers == 0 && a.experts == 0, "--layers/--experts apply to --preset only");
    std::string text = a.config;
    label = "--config";
    if (text.empty() || text.front() != '{') {
        std::ifstream in(a.config);
        K2_CHECK(in.good(), "--config {}: cannot read", a.config);
        std::stringstream ss;
        ss << in.rdbuf();
        text = ss.str();
        label = a.config;
    }
    try {
        return nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        K2_FAIL("{}: not valid JSON: {}", label, e.what());
    }
}

void run_synth(const SynthArgs& a) {
    std::string label;
    const nlohmann::json config_json = config_json_of(a, label);
    const ModelConfig config = parse_model_config(config_json.dump(), label);
    const SynthPlan plan = plan_synth(config, expected_tensors(config), parse_size(a.max_shard_size));
    std::printf("synth: %zu tensors, %.2f GB in %zu shards (%s, seed %llu)\n", plan.num_tensors,
                static_cast<double>(plan.total_bytes) / 1e9, plan.shards.size(), label.c_str(),
                static_cast<unsigned long long>(a.seed));
    if (a.dry_run) {
        for (const SynthShard& shard : plan.shards) {
            std::printf("  %s  %zu tensors  %.2f GB\n", shard.file.c_str(), shard.tensors.size(),
                        static_cast<double>(shard.bytes) / 1e9);
        }
        return;
    }
    SynthTokenizerSources sources = default_tokenizer_sources();
    if (!a.tiktoken.empty()) {
        sources.tiktoken = a.tiktoken;
    }
    write_synth_model_files(config_json, config, a.out_dir, sources);
    write_synth_weights(plan, a.out_dir, a.seed);
    std::printf("synth: wrote %s\n", a.out_dir.c_str());
}

}  // namespace

void add_synth_command(CLI::App& app) {
    auto args = std::make_shared<SynthArgs>();
    CLI::App* cmd = app.add_subcommand(
        "synth",
        "Write a random-weight checkpoint in the exact Kimi-K2 format (FP8 blocks + scales, shards, tokenizer)");
    cmd->add_option("OUT_DIR", args->out_dir, "Output folder")->required();
    auto* preset = cmd->add_option("--preset", args->preset, "Model preset: kimi-k2");
    auto* config = cmd->add_option("--config", args->config, "config.json to use (a path, or inline JSON)");
    preset->excludes(config);
    config->excludes(preset);
    cmd->add_option("--layers", args->layers, "With --preset: number of layers (default: all 61)");
    cmd->add_option("--experts", args->experts, "With --preset: routed experts per MoE layer (default: 384)");
    cmd->add_option("--seed", args->seed, "Random seed (the output is deterministic in it)")->capture_default_str();
    cmd->add_option("--max-shard-size", args->max_shard_size, "Maximum shard size (bytes, or with KB/MB/GB)")
        ->capture_default_str();
    cmd->add_option("--tiktoken", args->tiktoken, "Source of tiktoken.model ranks (default: bundled o200k_base)");
    cmd->add_flag("--dry-run", args->dry_run, "Print the shard plan and write nothing");
    cmd->callback([args] {
        K2_CHECK(!args->preset.empty() || !args->config.empty(), "synth: give --preset kimi-k2 or --config JSON");
        run_synth(*args);
    });
}

}  // namespace k2::cli

// `k2 inspect MODEL`: config summary, a compressed tensor table, and the checkpoint checks of
// model/weight_schema.h. Exits 1 with the list of problems when the checkpoint is invalid.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdio>
#include <map>
#include <regex>
#include <set>

#include "cli/commands.h"
#include "core/error.h"
#include "io/model_config.h"
#include "io/model_path.h"
#include "io/safetensors.h"
#include "model/weight_schema.h"

namespace k2::cli {

namespace {

constexpr size_t kMaxListed = 50;  // problems / extra tensors printed before "... and N more"

struct InspectArgs {
    std::string model;
    std::string revision;
    std::string download_dir;
};

// "1-3,7,9-60" from a sorted set.
std::string ranges(const std::set<long>& values) {
    std::string out;
    for (auto it = values.begin(); it != values.end();) {
        const long first = *it;
        long last = first;
        while (++it != values.end() && *it == last + 1) {
            last = *it;
        }
        out +=
            (out.empty() ? "" : ",") + (first == last ? fmt::format("{}", first) : fmt::format("{}-{}", first, last));
    }
    return out;
}

// Tensors with the same name pattern (layer and expert numbers taken out), dtype and shape.
struct TensorGroup {
    std::set<long> layers;
    std::set<long> experts;
    std::set<long> shards;
    size_t count = 0;
    uint64_t bytes = 0;
};

void print_config(const ModelConfig& c) {
    int dense = 0;
    for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
        dense += c.is_moe_layer(layer) ? 0 : 1;
    }
    std::printf("config: model_type %s, vocab %lld, hidden %lld, %d layers (%d dense, %d MoE), %d heads\n",
                c.model_type.c_str(), static_cast<long long>(c.vocab_size), static_cast<long long>(c.hidden_size),
                c.num_hidden_layers, dense, c.num_hidden_layers - dense, c.num_attention_heads);
    std::printf("  MLA: q_lora %lld, kv_lora %lld, qk nope %lld + rope %lld, v %lld\n",
                static_cast<long long>(c.q_lora_rank), static_cast<long long>(c.kv_lora_rank),
                static_cast<long long>(c.qk_nope_head_dim), static_cast<long long>(c.qk_rope_head_dim),
                static_cast<long long>(c.v_head_dim));
    std::printf(
        "  MLP: dense intermediate %lld; %d routed experts (top %d, n_group %d, topk_group %d) + %d shared, "
        "moe_intermediate %lld, scaling %.4g\n",
        static_cast<long long>(c.intermediate_size), c.n_routed_experts, c.num_experts_per_tok, c.n_group, c.topk_group,
        c.n_shared_experts, static_cast<long long>(c.moe_intermediate_size), c.routed_scaling_factor);
    std::printf("  RoPE: theta %g, scaling %s factor %g (beta_fast %g, beta_slow %g), max_position %lld\n",
                c.rope_theta, c.rope_scaling.type.c_str(), c.rope_scaling.factor, c.rope_scaling.beta_fast,
                c.rope_scaling.beta_slow, static_cast<long long>(c.max_position_embeddings));
    std::printf("  weights: %s\n",
                c.fp8_weights ? fmt::format("FP8 e4m3, {}x{} block scales", c.weight_block_n, c.weight_block_k).c_str()
                              : "unquantized");
}

// Groups every readable tensor; shards that fail to open are left out (their error is reported by the checks).
std::map<std::string, TensorGroup> group_tensors(const Checkpoint& ckpt, size_t& total, uint64_t& bytes) {
    static const std::regex kLayer(R"(^model\.layers\.(\d+)\.)");
    static const std::regex kExpert(R"(\.experts\.(\d+)\.)");
    const std::vector<std::string> files = ckpt.shard_files();
    std::map<std::string, TensorGroup> groups;
    for (size_t s = 0; s < files.size(); ++s) {
        const SafetensorsFile* shard = nullptr;
        try {
            shard = &ckpt.shard(files[s]);
        } catch (const Error&) {
            continue;
        }
        for (const auto& [name, info] : shard->tensors()) {
            std::string pattern = name;
            long layer = -1, expert = -1;
            std::smatch m;
            if (std::regex_search(pattern, m, kLayer)) {
                layer = std::stol(m[1]);
                pattern = m.prefix().str() + "model.layers.{L}." + m.suffix().str();
            }
            if (std::regex_search(pattern, m, kExpert)) {
                expert = std::stol(m[1]);
                pattern = m.prefix().str() + ".experts.{E}." + m.suffix().str();
            }
            const uint64_t nbytes = info.end - info.begin;
            TensorGroup& g =
                groups[fmt::format("{}\t{}\t[{}]", pattern, dtype_name(info.dtype), fmt::join(info.shape, ", "))];
            if (layer >= 0)
                g.layers.insert(layer);
            if (expert >= 0)
                g.experts.insert(expert);
            g.shards.insert(static_cast<long>(s) + 1);
            ++g.count;
            g.bytes += nbytes;
            ++total;
            bytes += nbytes;
        }
    }
    return groups;
}

void print_tensor_table(const Checkpoint& ckpt) {
    size_t total = 0;
    uint64_t bytes = 0;
    const auto groups = group_tensors(ckpt, total, bytes);
    std::printf("checkpoint: %zu tensors, %.3f GB in %zu shard(s) (%s)\n", total, static_cast<double>(bytes) / 1e9,
                ckpt.shard_files().size(), ckpt.source_file().filename().c_str());
    std::printf("  %-72s %-8s %-14s %7s  %s\n", "name ({L} layers, {E} experts)", "dtype", "shape", "count", "shards");
    for (const auto& [key, g] : groups) {
        const size_t tab1 = key.find('\t');
        const size_t tab2 = key.find('\t', tab1 + 1);
        std::string name = key.substr(0, tab1);
        if (const size_t at = name.find("{L}"); at != std::string::npos)
            name.replace(at, 3, "{" + ranges(g.layers) + "}");
        if (const size_t at = name.find("{E}"); at != std::string::npos)
            name.replace(at, 3, "{" + ranges(g.experts) + "}");
        std::printf("  %-72s %-8s %-14s %7zu  %s\n", name.c_str(), key.substr(tab1 + 1, tab2 - tab1 - 1).c_str(),
                    key.substr(tab2 + 1).c_str(), g.count, ranges(g.shards).c_str());
    }
}

template <typename List>
void print_list(const char* title, const List& items) {
    std::printf("%s (%zu):\n", title, items.size());
    for (size_t i = 0; i < items.size() && i < kMaxListed; ++i) {
        std::printf("  %s\n", items[i].c_str());
    }
    if (items.size() > kMaxListed) {
        std::printf("  ... and %zu more\n", items.size() - kMaxListed);
    }
}

void run_inspect(const InspectArgs& a) {
    const std::filesystem::path dir = resolve_model_path(a.model, a.revision, a.download_dir);
    std::printf("model: %s\n", dir.c_str());
    const ModelConfig config = load_model_config(dir);
    print_config(config);
    const Checkpoint ckpt = Checkpoint::open(dir);
    print_tensor_table(ckpt);
    const CheckpointReport report = check_checkpoint(ckpt, config, (dir / "config.json").string());
    if (!report.unexpected.empty()) {
        print_list("warning: unexpected tensors", report.unexpected);
    }
    if (!report.errors.empty()) {
        std::fflush(stdout);
        for (size_t i = 0; i < report.errors.size() && i < kMaxListed; ++i) {
            std::fprintf(stderr, "error: %s\n", report.errors[i].c_str());
        }
        K2_FAIL("{}: invalid checkpoint: {} problem(s){}", dir.string(), report.errors.size(),
                report.errors.size() > kMaxListed ? fmt::format(" ({} listed above)", kMaxListed) : "");
    }
    std::printf(
        "checks: OK: %zu expected tensors (scales included) present with the shapes and dtypes of "
        "config.json; %zu unexpected, %zu ignored (rotary_emb.inv_freq, MTP layers)\n",
        report.num_expected, report.unexpected.size(), report.num_ignored);
}

}  // namespace

void add_inspect_command(CLI::App& app) {
    auto args = std::make_shared<InspectArgs>();
    CLI::App* cmd = app.add_subcommand("inspect", "Show a checkpoint's config and tensors, and check them");
    cmd->add_option("MODEL", args->model, "Model folder, or a hub id org/name in the Hugging Face cache")->required();
    cmd->add_option("--revision", args->revision, "Hub revision (branch, tag or commit) for a hub id");
    cmd->add_option("--download-dir", args->download_dir, "Hugging Face cache folder to resolve a hub id in");
    cmd->callback([args] { run_inspect(*args); });
}

}  // namespace k2::cli

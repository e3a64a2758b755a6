#include "model/weight_schema.h"

#include <fmt/format.h>

#include <cstdlib>
#include <map>
#include <set>
#include <unordered_set>

#include "core/error.h"

namespace k2 {

namespace {

// Collects the expected list; `linear` knows whether projections are block-FP8 or plain BF16.
class SchemaBuilder {
public:
    explicit SchemaBuilder(const ModelConfig& config) : m_fp8(config.fp8_weights) {}

    void linear(std::string name, int64_t out, int64_t in) {
        m_out.push_back({std::move(name), {out, in}, m_fp8 ? DType::F8_E4M3 : DType::BF16, m_fp8});
    }
    void plain(std::string name, std::vector<int64_t> shape, DType dtype = DType::BF16) {
        m_out.push_back({std::move(name), std::move(shape), dtype, false});
    }
    void mlp(const std::string& prefix, int64_t hidden, int64_t inter) {
        linear(prefix + "gate_proj.weight", inter, hidden);
        linear(prefix + "up_proj.weight", inter, hidden);
        linear(prefix + "down_proj.weight", hidden, inter);
    }
    std::vector<ExpectedTensor> take() { return std::move(m_out); }

private:
    bool m_fp8;
    std::vector<ExpectedTensor> m_out;
};

void add_attention(SchemaBuilder& b, const std::string& p, const ModelConfig& c) {
    const int64_t heads = c.num_attention_heads;
    if (c.q_lora_rank > 0) {
        b.linear(p + "self_attn.q_a_proj.weight", c.q_lora_rank, c.hidden_size);
        b.plain(p + "self_attn.q_a_layernorm.weight", {c.q_lora_rank});
        b.linear(p + "self_attn.q_b_proj.weight", heads * c.qk_head_dim(), c.q_lora_rank);
    } else {
        b.linear(p + "self_attn.q_proj.weight", heads * c.qk_head_dim(), c.hidden_size);
    }
    // 512 latent + 64 rope rows for Kimi-K2: the one projection with a partial 128-row block.
    b.linear(p + "self_attn.kv_a_proj_with_mqa.weight", c.kv_lora_rank + c.qk_rope_head_dim, c.hidden_size);
    b.plain(p + "self_attn.kv_a_layernorm.weight", {c.kv_lora_rank});
    b.linear(p + "self_attn.kv_b_proj.weight", heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
    b.linear(p + "self_attn.o_proj.weight", c.hidden_size, heads * c.v_head_dim);
}

bool is_float(DType d) {
    return d == DType::BF16 || d == DType::F16 || d == DType::F32;
}

std::string shape_str(const std::vector<int64_t>& shape) {
    return fmt::format("[{}]", fmt::join(shape, ", "));
}

// Checks one tensor against what the config implies; false when it is absent or broken.
class TensorChecker {
public:
    TensorChecker(const Checkpoint& ckpt, const std::set<std::string>& broken_shards, const std::string& config_label,
                  std::vector<std::string>& errors)
        : m_ckpt(ckpt), m_broken(broken_shards), m_config(config_label), m_errors(errors) {}

    // `exact_dtype`: FP8 weights and scales must match exactly; other floats may be BF16/F16/F32.
    bool check(const std::string& name, const std::vector<int64_t>& shape, DType dtype, bool exact_dtype) {
        if (!m_ckpt.contains(name)) {
            return false;
        }
        const std::string& file = m_ckpt.file_of(name);
        if (m_broken.count(file) != 0) {
            return false;  // the shard's own error is already reported
        }
        const std::string path = (m_ckpt.dir() / file).string();
        const TensorInfo* info = nullptr;
        try {
            info = &m_ckpt.info(name);
        } catch (const Error& e) {
            m_errors.push_back(e.message());
            return false;
        }
        const bool dtype_ok = exact_dtype ? info->dtype == dtype : is_float(info->dtype);
        if (!dtype_ok) {
            m_errors.push_back(fmt::format(
                "{}: tensor '{}': dtype {}, expected {}{}", path, name, dtype_name(info->dtype), dtype_name(dtype),
                dtype == DType::F8_E4M3         ? fmt::format(" ({} quantization_config is fp8)", m_config)
                : info->dtype == DType::F8_E4M3 ? fmt::format(" ({} has no fp8 quantization_config)", m_config)
                                                : std::string()));
        }
        if (info->shape != shape) {
            m_errors.push_back(fmt::format("{}: tensor '{}': shape {} contradicts {} (expected {})", path, name,
                                           shape_str(info->shape), m_config, shape_str(shape)));
        }
        return true;
    }

    void missing(const std::string& name, const std::string& why) {
        m_errors.push_back(fmt::format("{}: missing tensor '{}' ({})", m_ckpt.source_file().string(), name, why));
    }

    std::string path_of(const std::string& name) const { return (m_ckpt.dir() / m_ckpt.file_of(name)).string(); }

private:
    const Checkpoint& m_ckpt;
    const std::set<std::string>& m_broken;
    const std::string& m_config;
    std::vector<std::string>& m_errors;
};

}  // namespace

std::string scale_name(const std::string& weight_name) {
    return weight_name + "_scale_inv";
}

std::vector<int64_t> scale_shape(const std::vector<int64_t>& weight_shape, const ModelConfig& config) {
    K2_CHECK(weight_shape.size() == 2, "scale_shape: weight of rank {} (expected 2)", weight_shape.size());
    const auto blocks = [](int64_t n, int64_t block) { return n / block + (n % block != 0 ? 1 : 0); };
    return {blocks(weight_shape[0], config.weight_block_n), blocks(weight_shape[1], config.weight_block_k)};
}

bool is_ignored_tensor(const std::string& name, const ModelConfig& config) {
    if (name.find("rotary_emb.inv_freq") != std::string::npos) {
        return true;
    }
    static constexpr std::string_view kLayers = "model.layers.";
    if (name.compare(0, kLayers.size(), kLayers) != 0) {
        return false;
    }
    const char* digits = name.c_str() + kLayers.size();
    char* end = nullptr;
    const long layer = std::strtol(digits, &end, 10);
    return end != digits && *end == '.' && layer >= config.num_hidden_layers;
}

std::vector<ExpectedTensor> expected_tensors(const ModelConfig& c) {
    // A guard against absurd configs (fuzzed or mistyped): Kimi-K2 has 139,644 tensors.
    const int64_t per_layer = 16 + 3 * static_cast<int64_t>(c.n_routed_experts);
    K2_CHECK(c.num_hidden_layers <= 100'000 && per_layer * c.num_hidden_layers <= 50'000'000,
             "config: {} layers x {} routed experts is not a plausible model", c.num_hidden_layers, c.n_routed_experts);
    SchemaBuilder b(c);
    b.plain("model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
    for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
        const std::string p = fmt::format("model.layers.{}.", layer);
        b.plain(p + "input_layernorm.weight", {c.hidden_size});
        add_attention(b, p, c);
        b.plain(p + "post_attention_layernorm.weight", {c.hidden_size});
        if (c.is_moe_layer(layer)) {
            b.plain(p + "mlp.gate.weight", {c.n_routed_experts, c.hidden_size});
            b.plain(p + "mlp.gate.e_score_correction_bias", {c.n_routed_experts}, DType::F32);
            for (int e = 0; e < c.n_routed_experts; ++e) {
                b.mlp(fmt::format("{}mlp.experts.{}.", p, e), c.hidden_size, c.moe_intermediate_size);
            }
            if (c.n_shared_experts > 0) {
                b.mlp(p + "mlp.shared_experts.", c.hidden_size, c.moe_intermediate_size * c.n_shared_experts);
            }
        } else {
            b.mlp(p + "mlp.", c.hidden_size, c.intermediate_size);
        }
    }
    b.plain("model.norm.weight", {c.hidden_size});
    if (!c.tie_word_embeddings) {
        b.plain("lm_head.weight", {c.vocab_size, c.hidden_size});
    }
    return b.take();
}

CheckpointReport check_checkpoint(const Checkpoint& ckpt, const ModelConfig& config, const std::string& config_label) {
    CheckpointReport report;
    std::set<std::string> broken;
    for (const std::string& file : ckpt.shard_files()) {
        try {
            (void)ckpt.shard(file);
        } catch (const Error& e) {
            report.errors.push_back(e.message());
            broken.insert(file);
        }
    }
    if (!broken.empty()) {
        // Name the tensors lost with each broken shard, so the line says what cannot be loaded.
        std::map<std::string, std::pair<size_t, std::string>> lost;  // file -> (count, first name)
        for (const std::string& name : ckpt.names()) {
            auto& [count, first] = lost[ckpt.file_of(name)];
            first = count++ == 0 ? name : first;
        }
        for (std::string& error : report.errors) {
            for (const std::string& file : broken) {
                if (error.find(file) != std::string::npos) {
                    error += fmt::format(" ({} tensors of {} are in it, e.g. '{}')", lost[file].first,
                                         ckpt.source_file().filename().string(), lost[file].second);
                    break;
                }
            }
        }
    }
    TensorChecker checker(ckpt, broken, config_label, report.errors);
    std::unordered_set<std::string> known;
    for (const ExpectedTensor& t : expected_tensors(config)) {
        known.insert(t.name);
        ++report.num_expected;
        const bool present = checker.check(t.name, t.shape, t.dtype, t.dtype == DType::F8_E4M3);
        if (!present && !ckpt.contains(t.name)) {
            checker.missing(t.name, fmt::format("required by {}", config_label));
        }
        if (!t.has_scale) {
            continue;
        }
        const std::string scale = scale_name(t.name);
        known.insert(scale);
        ++report.num_expected;
        if (ckpt.contains(scale)) {
            (void)checker.check(scale, scale_shape(t.shape, config), DType::F32, true);
        } else if (ckpt.contains(t.name)) {
            report.errors.push_back(
                fmt::format("{}: FP8 weight '{}' has no scale tensor '{}'", checker.path_of(t.name), t.name, scale));
        }
    }
    for (const std::string& name : ckpt.names()) {
        if (is_ignored_tensor(name, config)) {
            ++report.num_ignored;
        } else if (known.count(name) == 0) {
            report.unexpected.push_back(name);
        }
    }
    return report;
}

std::vector<std::string> validate_checkpoint(const Checkpoint& checkpoint, const ModelConfig& config) {
    const CheckpointReport report = check_checkpoint(checkpoint, config, (checkpoint.dir() / "config.json").string());
    if (!report.errors.empty()) {
        K2_FAIL("{}{}", report.errors.front(),
                report.errors.size() > 1 ? fmt::format(" (and {} more problems)", report.errors.size() - 1) : "");
    }
    return report.unexpected;
}

}  // namespace k2

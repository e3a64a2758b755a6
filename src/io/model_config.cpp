#include "io/model_config.h"

#include <cmath>
#include <algorithm>
#include <fstream>
#include <limits>
#include <utility>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace k2 {

using json = nlohmann::json;

namespace {

struct Reader {
    const json& obj;
    const std::string& label;

    const json* find(const char* key) const {
        const auto it = obj.find(key);
        return it == obj.end() || it->is_null() ? nullptr : &*it;
    }
    template <typename T>
    T integer(const char* key, T fallback, bool required, T min_value) const {
        const json* v = find(key);
        if (v == nullptr) {
            K2_CHECK(!required, "{}: missing required key '{}'", label, key);
            return fallback;
        }
        K2_CHECK(v->is_number_integer(), "{}: key '{}' must be an integer", label, key);
        const int64_t x = v->get<int64_t>();
        K2_CHECK(x >= static_cast<int64_t>(min_value), "{}: key '{}' = {} must be >= {}", label, key, x,
                 static_cast<int64_t>(min_value));
        K2_CHECK(x <= static_cast<int64_t>(std::numeric_limits<T>::max()), "{}: key '{}' = {} is too large", label,
                 key, x);
        return static_cast<T>(x);
    }
    double number(const char* key, double fallback, bool required) const {
        const json* v = find(key);
        if (v == nullptr) {
            K2_CHECK(!required, "{}: missing required key '{}'", label, key);
            return fallback;
        }
        K2_CHECK(v->is_number(), "{}: key '{}' must be a number", label, key);
        const double x = v->get<double>();
        K2_CHECK(std::isfinite(x), "{}: key '{}' must be finite", label, key);
        return x;
    }
    std::string string(const char* key, const std::string& fallback) const {
        const json* v = find(key);
        if (v == nullptr) {
            return fallback;
        }
        K2_CHECK(v->is_string(), "{}: key '{}' must be a string", label, key);
        return v->get<std::string>();
    }
    bool boolean(const char* key, bool fallback) const {
        const json* v = find(key);
        if (v == nullptr) {
            return fallback;
        }
        K2_CHECK(v->is_boolean(), "{}: key '{}' must be true or false", label, key);
        return v->get<bool>();
    }
};

RopeScaling parse_rope_scaling(const json& root, const std::string& label) {
    RopeScaling rope;
    // Newer transformers re-save rope_scaling as rope_parameters (with rope_type).
    const char* key = root.contains("rope_scaling") && !root["rope_scaling"].is_null() ? "rope_scaling"
                      : root.contains("rope_parameters")                               ? "rope_parameters"
                                                                                       : nullptr;
    if (key == nullptr || root[key].is_null()) {
        return rope;
    }
    const json& obj = root[key];
    K2_CHECK(obj.is_object(), "{}: key '{}' must be an object", label, key);
    const Reader r{obj, label};
    std::string type = r.string("type", r.string("rope_type", "none"));
    K2_CHECK(type == "yarn" || type == "deepseek_yarn" || type == "default" || type == "none",
             "{}: key '{}.type' = '{}' is not supported (yarn or none)", label, key, type);
    rope.type = (type == "yarn" || type == "deepseek_yarn") ? "yarn" : "none";
    rope.factor = r.number("factor", 1.0, rope.type == "yarn");
    K2_CHECK(rope.factor > 0, "{}: key '{}.factor' must be positive", label, key);
    rope.beta_fast = r.number("beta_fast", 32.0, false);
    rope.beta_slow = r.number("beta_slow", 1.0, false);
    rope.mscale = r.number("mscale", 1.0, false);
    rope.mscale_all_dim = r.number("mscale_all_dim", 0.0, false);
    rope.original_max_position_embeddings = r.integer<int64_t>("original_max_position_embeddings", 4096, false, 1);
    return rope;
}

void parse_quantization(const json& root, ModelConfig& cfg, const std::string& label) {
    if (!root.contains("quantization_config") || root["quantization_config"].is_null()) {
        return;
    }
    const json& q = root["quantization_config"];
    K2_CHECK(q.is_object(), "{}: key 'quantization_config' must be an object", label);
    const Reader r{q, label};
    const std::string method = r.string("quant_method", "");
    K2_CHECK(method == "fp8", "{}: key 'quantization_config.quant_method' = '{}' is not supported (fp8)", label,
             method);
    const std::string fmt = r.string("fmt", "e4m3");
    K2_CHECK(fmt == "e4m3", "{}: key 'quantization_config.fmt' = '{}' is not supported (e4m3)", label, fmt);
    const std::string scheme = r.string("activation_scheme", "dynamic");
    K2_CHECK(scheme == "dynamic", "{}: key 'quantization_config.activation_scheme' = '{}' is not supported",
             label, scheme);
    cfg.fp8_weights = true;
    if (q.contains("weight_block_size")) {
        const json& b = q["weight_block_size"];
        K2_CHECK(b.is_array() && b.size() == 2 && b[0].is_number_integer() && b[1].is_number_integer() &&
                     b[0].get<int64_t>() > 0 && b[1].get<int64_t>() > 0,
                 "{}: key 'quantization_config.weight_block_size' must be two positive integers", label);
        cfg.weight_block_n = b[0].get<int64_t>();
        cfg.weight_block_k = b[1].get<int64_t>();
    }
}

std::vector<int64_t> parse_eos(const json& root, const std::string& label) {
    std::vector<int64_t> ids;
    if (!root.contains("eos_token_id") || root["eos_token_id"].is_null()) {
        return ids;
    }
    const json& v = root["eos_token_id"];
    if (v.is_number_integer()) {
        ids.push_back(v.get<int64_t>());
        return ids;
    }
    K2_CHECK(v.is_array(), "{}: key 'eos_token_id' must be an integer or a list of integers", label);
    for (const json& x : v) {
        K2_CHECK(x.is_number_integer(), "{}: key 'eos_token_id' must be an integer or a list of integers", label);
        ids.push_back(x.get<int64_t>());
    }
    return ids;
}

// Upper bound for every dimension: far above any real model (Kimi-K2's largest is 163840), and low
// enough that products of two or three dimensions cannot overflow int64.
constexpr int64_t kMaxDim = int64_t{1} << 24;

void validate_bounds(const ModelConfig& c, const std::string& label) {
    const std::pair<const char*, int64_t> dims[] = {
        {"vocab_size", c.vocab_size},
        {"hidden_size", c.hidden_size},
        {"intermediate_size", c.intermediate_size},
        {"moe_intermediate_size", c.moe_intermediate_size},
        {"num_hidden_layers", c.num_hidden_layers},
        {"num_attention_heads", c.num_attention_heads},
        {"q_lora_rank", c.q_lora_rank},
        {"kv_lora_rank", c.kv_lora_rank},
        {"qk_nope_head_dim", c.qk_nope_head_dim},
        {"qk_rope_head_dim", c.qk_rope_head_dim},
        {"v_head_dim", c.v_head_dim},
        {"n_routed_experts", c.n_routed_experts},
        {"n_shared_experts", c.n_shared_experts},
        {"quantization_config.weight_block_size", std::max(c.weight_block_n, c.weight_block_k)},
    };
    for (const auto& [key, value] : dims) {
        K2_CHECK(value <= kMaxDim, "{}: key '{}' = {} exceeds the supported maximum {}", label, key, value, kMaxDim);
    }
}

void validate(const ModelConfig& c, const std::string& label) {
    validate_bounds(c, label);
    K2_CHECK(c.qk_rope_head_dim % 2 == 0, "{}: key 'qk_rope_head_dim' = {} must be even", label,
             c.qk_rope_head_dim);
    if (c.n_routed_experts > 0) {
        K2_CHECK(c.num_experts_per_tok >= 1 && c.num_experts_per_tok <= c.n_routed_experts,
                 "{}: key 'num_experts_per_tok' = {} must be in [1, n_routed_experts = {}]", label,
                 c.num_experts_per_tok, c.n_routed_experts);
        K2_CHECK(c.n_group >= 1 && c.n_routed_experts % c.n_group == 0,
                 "{}: key 'n_group' = {} must divide n_routed_experts = {}", label, c.n_group, c.n_routed_experts);
        K2_CHECK(c.topk_group >= 1 && c.topk_group <= c.n_group, "{}: key 'topk_group' = {} must be in [1, n_group]",
                 label, c.topk_group);
        K2_CHECK(c.num_experts_per_tok <= c.topk_group * (c.n_routed_experts / c.n_group),
                 "{}: key 'num_experts_per_tok' = {} exceeds the experts in topk_group groups", label,
                 c.num_experts_per_tok);
        K2_CHECK(c.scoring_func == "sigmoid", "{}: key 'scoring_func' = '{}' is not supported (sigmoid)", label,
                 c.scoring_func);
        K2_CHECK(c.topk_method == "noaux_tc", "{}: key 'topk_method' = '{}' is not supported (noaux_tc)", label,
                 c.topk_method);
        K2_CHECK(c.moe_intermediate_size > 0, "{}: missing required key 'moe_intermediate_size'", label);
    }
    K2_CHECK(c.first_k_dense_replace <= c.num_hidden_layers, "{}: key 'first_k_dense_replace' = {} exceeds layers",
             label, c.first_k_dense_replace);
}

}  // namespace

double yarn_get_mscale(double scale, double mscale) {
    return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

double ModelConfig::softmax_scale() const {
    double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
    if (rope_scaling.type == "yarn" && rope_scaling.mscale_all_dim != 0.0) {
        const double m = yarn_get_mscale(rope_scaling.factor, rope_scaling.mscale_all_dim);
        scale *= m * m;
    }
    return scale;
}

ModelConfig parse_model_config(const std::string& json_text, const std::string& label) {
    json root;
    try {
        root = json::parse(json_text);
    } catch (const json::exception& e) {
        K2_FAIL("{}: not valid JSON: {}", label, e.what());
    }
    K2_CHECK(root.is_object(), "{}: top level is not a JSON object", label);
    // K2.5-style wrappers keep the language model's config under text_config.
    const json& obj = root.contains("text_config") && root["text_config"].is_object() ? root["text_config"] : root;
    const Reader r{obj, label};
    ModelConfig c;
    c.model_type = r.string("model_type", "deepseek_v3");
    c.vocab_size = r.integer<int64_t>("vocab_size", 0, true, 1);
    c.hidden_size = r.integer<int64_t>("hidden_size", 0, true, 1);
    c.intermediate_size = r.integer<int64_t>("intermediate_size", 0, true, 1);
    c.moe_intermediate_size = r.integer<int64_t>("moe_intermediate_size", 0, false, 0);
    c.num_hidden_layers = r.integer<int>("num_hidden_layers", 0, true, 1);
    c.num_attention_heads = r.integer<int>("num_attention_heads", 0, true, 1);
    c.q_lora_rank = r.integer<int64_t>("q_lora_rank", 0, false, 0);
    c.kv_lora_rank = r.integer<int64_t>("kv_lora_rank", 0, true, 1);
    c.qk_nope_head_dim = r.integer<int64_t>("qk_nope_head_dim", 0, true, 1);
    c.qk_rope_head_dim = r.integer<int64_t>("qk_rope_head_dim", 0, true, 2);
    c.v_head_dim = r.integer<int64_t>("v_head_dim", 0, true, 1);
    c.n_routed_experts = r.integer<int>("n_routed_experts", 0, false, 0);
    c.n_shared_experts = r.integer<int>("n_shared_experts", 0, false, 0);
    c.num_experts_per_tok = r.integer<int>("num_experts_per_tok", 0, false, 0);
    c.n_group = r.integer<int>("n_group", 1, false, 1);
    c.topk_group = r.integer<int>("topk_group", 1, false, 1);
    c.first_k_dense_replace = r.integer<int>("first_k_dense_replace", 0, false, 0);
    c.moe_layer_freq = r.integer<int>("moe_layer_freq", 1, false, 1);
    c.norm_topk_prob = r.boolean("norm_topk_prob", true);
    c.routed_scaling_factor = r.number("routed_scaling_factor", 1.0, false);
    c.scoring_func = r.string("scoring_func", "sigmoid");
    c.topk_method = r.string("topk_method", "noaux_tc");
    c.rms_norm_eps = r.number("rms_norm_eps", 1e-6, false);
    K2_CHECK(c.rms_norm_eps > 0, "{}: key 'rms_norm_eps' must be positive", label);
    c.rope_theta = r.number("rope_theta", 10000.0, false);
    K2_CHECK(c.rope_theta > 1.0, "{}: key 'rope_theta' must be > 1", label);
    c.rope_scaling = parse_rope_scaling(obj, label);
    c.max_position_embeddings = r.integer<int64_t>("max_position_embeddings", 4096, false, 1);
    c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
    c.bos_token_id = r.integer<int64_t>("bos_token_id", -1, false, -1);
    c.eos_token_ids = parse_eos(obj, label);
    parse_quantization(obj, c, label);
    validate(c, label);
    return c;
}

ModelConfig load_model_config(const std::filesystem::path& model_dir) {
    const auto path = model_dir / "config.json";
    std::ifstream in(path);
    K2_CHECK(in.good(), "{}: cannot read config.json", path.string());
    std::stringstream ss;
    ss << in.rdbuf();
    return parse_model_config(ss.str(), path.string());
}

}  // namespace k2

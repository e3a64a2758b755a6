// ModelConfig: the DeepSeek-V3 / Kimi-K2 hyper-parameters read from config.json.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace k2 {

struct RopeScaling {
    std::string type = "none";  // "yarn" or "none"
    double factor = 1.0;
    double beta_fast = 32.0;
    double beta_slow = 1.0;
    double mscale = 1.0;
    double mscale_all_dim = 0.0;
    int64_t original_max_position_embeddings = 4096;
};

struct ModelConfig {
    std::string model_type;  // "kimi_k2" or "deepseek_v3"
    int64_t vocab_size = 0;
    int64_t hidden_size = 0;
    int64_t intermediate_size = 0;      // dense MLP
    int64_t moe_intermediate_size = 0;  // per routed / shared expert
    int num_hidden_layers = 0;
    int num_attention_heads = 0;
    int64_t q_lora_rank = 0;  // 0 = no q LoRA (q_proj directly)
    int64_t kv_lora_rank = 0;
    int64_t qk_nope_head_dim = 0;
    int64_t qk_rope_head_dim = 0;
    int64_t v_head_dim = 0;
    int n_routed_experts = 0;
    int n_shared_experts = 0;
    int num_experts_per_tok = 0;
    int n_group = 1;
    int topk_group = 1;
    int first_k_dense_replace = 0;
    int moe_layer_freq = 1;
    bool norm_topk_prob = true;
    double routed_scaling_factor = 1.0;
    std::string scoring_func = "sigmoid";
    std::string topk_method = "noaux_tc";
    double rms_norm_eps = 1e-6;
    double rope_theta = 10000.0;
    RopeScaling rope_scaling;
    int64_t max_position_embeddings = 0;
    bool tie_word_embeddings = false;
    std::vector<int64_t> eos_token_ids;  // config.json eos_token_id (int or list)
    int64_t bos_token_id = -1;
    // quantization_config: FP8 e4m3 weights with 128x128 block scales when quant_method == "fp8".
    bool fp8_weights = false;
    int64_t weight_block_n = 128;
    int64_t weight_block_k = 128;

    int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
    bool is_moe_layer(int layer_idx) const {
        return n_routed_experts > 0 && layer_idx >= first_k_dense_replace && layer_idx % moe_layer_freq == 0;
    }
    // softmax scale of MLA: qk_head_dim^-0.5 x mscale^2 (YaRN, DeepSeek form).
    double softmax_scale() const;
};

// Parses config.json text; `label` names the file in errors. Each error names the offending key.
ModelConfig parse_model_config(const std::string& json_text, const std::string& label);
ModelConfig load_model_config(const std::filesystem::path& model_dir);

// yarn_get_mscale(s, m) = 1 if s <= 1 else 0.1 m ln(s) + 1.
double yarn_get_mscale(double scale, double mscale);

}  // namespace k2

// Weight loading for DeepseekV3Model: tensor views into the mmap'ed checkpoint, by HF name.
#include <fmt/format.h>

#include "backend/cpu/linear.h"
#include "backend/cpu/norm.h"
#include "model/deepseek_v3.h"

namespace k2 {

namespace {

class WeightReader {
public:
    WeightReader(const Checkpoint& checkpoint, const ModelConfig& config) : m_ckpt(checkpoint), m_config(config) {}

    Tensor tensor(const std::string& name, const std::vector<int64_t>& shape) const {
        K2_CHECK(m_ckpt.contains(name), "{}: tensor {} is missing", m_ckpt.dir().string(), name);
        Tensor t = m_ckpt.get(name);
        K2_CHECK(t.shape() == shape, "{}: tensor {} has shape {}, config.json implies {}", m_ckpt.file_of(name), name,
                 t.shape_string(), Tensor::view(DType::F32, shape, nullptr).shape_string());
        return t;
    }

    LinearWeight linear(const std::string& prefix, int64_t out, int64_t in) const {
        LinearWeight w;
        w.weight = tensor(prefix + ".weight", {out, in});
        if (w.weight.dtype() == DType::F8_E4M3) {
            const int64_t bn = m_config.weight_block_n;
            const int64_t bk = m_config.weight_block_k;
            w.scale_inv = tensor(prefix + ".weight_scale_inv", {(out + bn - 1) / bn, (in + bk - 1) / bk});
            K2_CHECK(w.scale_inv.dtype() == DType::F32, "{}: {}.weight_scale_inv must be F32, not {}",
                     m_ckpt.file_of(prefix + ".weight_scale_inv"), prefix, dtype_name(w.scale_inv.dtype()));
        }
        return w;
    }

    MlpWeights mlp(const std::string& prefix, int64_t hidden, int64_t inter) const {
        return {linear(prefix + ".gate_proj", inter, hidden), linear(prefix + ".up_proj", inter, hidden),
                linear(prefix + ".down_proj", hidden, inter)};
    }

private:
    const Checkpoint& m_ckpt;
    const ModelConfig& m_config;
};

// kv_b_proj [heads * (nope + v), kv_lora] split per head into W_UK [heads, nope, kv_lora] and W_UV.
void split_kv_b(const LinearWeight& kv_b, const ModelConfig& c, LayerWeights& layer) {
    const int64_t nope = c.qk_nope_head_dim;
    const int64_t v = c.v_head_dim;
    const int64_t r = c.kv_lora_rank;
    layer.w_uk.resize(static_cast<size_t>(c.num_attention_heads * nope * r));
    layer.w_uv.resize(static_cast<size_t>(c.num_attention_heads * v * r));
    for (int64_t h = 0; h < c.num_attention_heads; ++h) {
        for (int64_t i = 0; i < nope + v; ++i) {
            float* dst = i < nope ? layer.w_uk.data() + (h * nope + i) * r : layer.w_uv.data() + (h * v + i - nope) * r;
            cpu::dequantize_row(kv_b.weight, kv_b.scale(), h * (nope + v) + i, dst, c.weight_block_n, c.weight_block_k);
        }
    }
}

LayerWeights load_layer(const WeightReader& rd, const ModelConfig& c, int l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    const int64_t hidden = c.hidden_size;
    const int64_t heads = c.num_attention_heads;
    LayerWeights w;
    w.input_norm = rd.tensor(p + "input_layernorm.weight", {hidden});
    w.post_attention_norm = rd.tensor(p + "post_attention_layernorm.weight", {hidden});
    const std::string a = p + "self_attn.";
    if (c.q_lora_rank > 0) {
        w.q_a = rd.linear(a + "q_a_proj", c.q_lora_rank, hidden);
        w.q_a_norm = rd.tensor(a + "q_a_layernorm.weight", {c.q_lora_rank});
        w.q_b = rd.linear(a + "q_b_proj", heads * c.qk_head_dim(), c.q_lora_rank);
    } else {
        w.q_proj = rd.linear(a + "q_proj", heads * c.qk_head_dim(), hidden);
    }
    w.kv_a = rd.linear(a + "kv_a_proj_with_mqa", c.kv_lora_rank + c.qk_rope_head_dim, hidden);
    w.kv_a_norm = rd.tensor(a + "kv_a_layernorm.weight", {c.kv_lora_rank});
    split_kv_b(rd.linear(a + "kv_b_proj", heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank), c, w);
    w.o_proj = rd.linear(a + "o_proj", hidden, heads * c.v_head_dim);

    const std::string m = p + "mlp.";
    w.is_moe = c.is_moe_layer(l);
    if (!w.is_moe) {
        w.dense = rd.mlp(m.substr(0, m.size() - 1), hidden, c.intermediate_size);
        return w;
    }
    const int64_t experts = c.n_routed_experts;
    w.router = rd.tensor(m + "gate.weight", {experts, hidden});
    w.router_bias.assign(static_cast<size_t>(experts), 0.0f);
    if (c.topk_method == "noaux_tc") {
        cpu::to_float(rd.tensor(m + "gate.e_score_correction_bias", {experts}), w.router_bias.data());
    }
    w.experts.reserve(static_cast<size_t>(experts));
    for (int64_t e = 0; e < experts; ++e) {
        w.experts.push_back(rd.mlp(fmt::format("{}experts.{}", m, e), hidden, c.moe_intermediate_size));
    }
    w.has_shared = c.n_shared_experts > 0;
    if (w.has_shared) {
        w.shared = rd.mlp(m + "shared_experts", hidden, c.moe_intermediate_size * c.n_shared_experts);
    }
    return w;
}

}  // namespace

DeepseekV3Weights load_deepseek_v3_weights(const Checkpoint& checkpoint, const ModelConfig& config) {
    const WeightReader rd(checkpoint, config);
    DeepseekV3Weights w;
    w.embed_tokens = rd.tensor("model.embed_tokens.weight", {config.vocab_size, config.hidden_size});
    w.layers.reserve(static_cast<size_t>(config.num_hidden_layers));
    for (int l = 0; l < config.num_hidden_layers; ++l) {
        w.layers.push_back(load_layer(rd, config, l));
    }
    w.final_norm = rd.tensor("model.norm.weight", {config.hidden_size});
    const std::string head = config.tie_word_embeddings ? "model.embed_tokens" : "lm_head";
    w.lm_head = rd.linear(head, config.vocab_size, config.hidden_size);
    return w;
}

}  // namespace k2

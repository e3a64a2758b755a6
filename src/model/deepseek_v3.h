// DeepSeek-V3 / Kimi-K2 on the CPU backend: MLA (absorbed, over the paged latent cache), dense SwiGLU and
// noaux_tc MoE layers, all in fp32 on weights kept as stored (FP8 blocks are dequantized inside the matmuls).
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "backend/cpu/rope.h"
#include "io/safetensors.h"
#include "model/deepseek_v3_shard.h"
#include "model/latent_cache.h"
#include "model/model.h"

namespace k2 {

// A projection as stored: weight [out, in] (F8_E4M3 with F32 scale_inv [ceil(out/bn), ceil(in/bk)], or BF16/F32).
struct LinearWeight {
    Tensor weight;
    Tensor scale_inv;  // defined for FP8 weights only
    const Tensor* scale() const { return weight.dtype() == DType::F8_E4M3 ? &scale_inv : nullptr; }
    int64_t out_features() const { return weight.dim(0); }
};

struct MlpWeights {
    LinearWeight gate;  // [inter, hidden]
    LinearWeight up;    // [inter, hidden]
    LinearWeight down;  // [hidden, inter]
};

struct LayerWeights {
    Tensor input_norm;           // [hidden]
    Tensor post_attention_norm;  // [hidden]
    // Attention: q through q_a -> q_a_norm -> q_b, or q_proj when q_lora_rank == 0.
    LinearWeight q_a;         // [q_lora_rank, hidden]
    Tensor q_a_norm;          // [q_lora_rank]
    LinearWeight q_b;         // [heads * qk_head_dim, q_lora_rank]
    LinearWeight q_proj;      // [heads * qk_head_dim, hidden]
    LinearWeight kv_a;        // [kv_lora_rank + rope_dim, hidden]
    Tensor kv_a_norm;         // [kv_lora_rank]
    LinearWeight o_proj;      // [hidden, heads * v_head_dim]
    std::vector<float> w_uk;  // [heads, qk_nope_head_dim, kv_lora_rank] kv_b_proj's key rows, dequantized
    std::vector<float> w_uv;  // [heads, v_head_dim, kv_lora_rank] kv_b_proj's value rows, dequantized
    // Feed-forward: dense, or router + experts + shared experts.
    bool is_moe = false;
    MlpWeights dense;
    Tensor router;                   // [n_routed_experts, hidden]
    std::vector<float> router_bias;  // [n_routed_experts] e_score_correction_bias (zeros when absent)
    std::vector<MlpWeights> experts;
    bool has_shared = false;
    MlpWeights shared;  // intermediate = moe_intermediate_size * n_shared_experts
};

struct DeepseekV3Weights {
    Tensor embed_tokens;  // [vocab, hidden]
    std::vector<LayerWeights> layers;
    Tensor final_norm;     // [hidden]
    LinearWeight lm_head;  // [vocab, hidden]
};

// The config's rope_scaling as the RoPE ops take it (shared by the CPU and CUDA models).
cpu::YarnParams yarn_params(const RopeScaling& rope_scaling);

// Reads every tensor the forward needs from `checkpoint` (views, nothing copied but kv_b_proj's split).
DeepseekV3Weights load_deepseek_v3_weights(const Checkpoint& checkpoint, const ModelConfig& config);

class DeepseekV3Model final : public Model {
public:
    // `weights` as loaded (whole); the constructor keeps only this rank's shard when options.parallel is set.
    DeepseekV3Model(ModelConfig config, Checkpoint checkpoint, DeepseekV3Weights weights, const ModelOptions& options);

    const ModelConfig& config() const override { return m_config; }
    size_t kv_cache_bytes_per_block() const override { return m_cache.bytes_per_block(); }
    void allocate_kv_cache(int num_blocks) override { m_cache.allocate(num_blocks); }
    Tensor forward(const ForwardBatch& batch) override;

private:
    void check_batch(const ForwardBatch& batch) const;
    // The residual stream entering this pipeline stage: h [T, hidden].
    void stage_input(const ForwardBatch& batch, std::vector<float>& h);
    // Final norm + lm_head on the rows whose logits are wanted; all vocabulary shards gathered: [rows, vocab].
    Tensor compute_logits(const ForwardBatch& batch, const std::vector<float>& h);
    // Pipeline: the last stage hands the logits to stage 0 (the DP leader).
    Tensor pipeline_logits(const ForwardBatch& batch, Tensor logits);
    // TP: sums this rank's partial sublayer output over the TP group.  x: [count]
    void tp_all_reduce(float* x, size_t count);
    // Latent writes and attention of a decode-context-parallel rank (only its tokens are stored here).
    void write_latent(int layer, const std::vector<float>& kv, const ForwardBatch& batch);
    void attend(int layer, const std::vector<float>& q_abs, const ForwardBatch& batch, std::vector<float>& o_lat);
    void attend_dcp(int layer, const std::vector<float>& q_abs, const ForwardBatch& batch, std::vector<float>& o_lat);
    // Routed experts with expert parallelism: this TP rank's share of the tokens goes to the experts' ranks.
    void routed_experts_ep(const LayerWeights& w, const float* x, int64_t num_tokens, const int32_t* ids,
                           const float* weights, float* out);
    void routed_experts_local(const LayerWeights& w, const float* x, int64_t num_tokens, const int32_t* ids,
                              const float* weights, float* out);
    // ys [rows, hidden] = expert(x[rows]) for the given rows of x [*, hidden].
    void expert_on_rows(const MlpWeights& w, const float* x, std::span<const int64_t> rows, std::vector<float>& ys);
    // x: [T, hidden] normed input; out: [T, hidden].
    void attention(int layer, const float* x, const ForwardBatch& batch, float* out);
    void project_qkv(int layer, const float* x, const ForwardBatch& batch, std::vector<float>& q,
                     std::vector<float>& kv);
    void output_projection(int layer, const std::vector<float>& o_lat, int64_t num_tokens, float* out);
    void mlp(const MlpWeights& w, const float* x, int64_t num_tokens, float* out);
    void moe(const LayerWeights& w, const float* x, int64_t num_tokens, float* out);
    void linear(const float* x, int64_t m, const LinearWeight& w, float* y) const;

    ModelConfig m_config;
    Checkpoint m_checkpoint;  // keeps the mappings the weights view
    DeepseekV3Weights m_weights;
    std::vector<float> m_inv_freq;  // [qk_rope_head_dim / 2]
    float m_rope_scale = 1.0f;
    float m_softmax_scale = 1.0f;
    std::shared_ptr<dist::ParallelGroups> m_groups;  // size-1 groups for a single-rank job
    ShardLayout m_shard;
    LatentKvCache m_cache;  // this stage's layers; with DCP only this rank's tokens (block_size / dcp per block)
};

}  // namespace k2

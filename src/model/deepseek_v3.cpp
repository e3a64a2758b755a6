#include "model/deepseek_v3.h"

#include <omp.h>

#include <algorithm>

#include "backend/cpu/activation.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/embedding.h"
#include "backend/cpu/linear.h"
#include "backend/cpu/moe_router.h"
#include "backend/cpu/norm.h"

namespace k2 {

namespace {

// HF builds q_a_layernorm / kv_a_layernorm with the RMSNorm class default, not config.rms_norm_eps.
constexpr float kLoraNormEps = 1e-6f;
// Below this many multiply-adds a parallel region costs more than it saves.
constexpr int64_t kParallelMinWork = int64_t{1} << 18;

DType cache_dtype(KvCacheDType d) {
    switch (d) {
        case KvCacheDType::BF16:
            return DType::BF16;
        case KvCacheDType::FP8_E4M3:
            return DType::F8_E4M3;
        default:
            return DType::F32;
    }
}

void add_into(float* h, const float* x, size_t n) {
    for (size_t i = 0; i < n; ++i)
        h[i] += x[i];
}

}  // namespace

cpu::YarnParams yarn_params(const RopeScaling& r) {
    cpu::YarnParams p;
    p.yarn = r.type == "yarn";
    p.factor = r.factor;
    p.beta_fast = r.beta_fast;
    p.beta_slow = r.beta_slow;
    p.mscale = r.mscale;
    p.mscale_all_dim = r.mscale_all_dim;
    p.original_max_position_embeddings = r.original_max_position_embeddings;
    return p;
}

DeepseekV3Model::DeepseekV3Model(ModelConfig config, Checkpoint checkpoint, DeepseekV3Weights weights,
                                 const ModelOptions& options)
    : m_config(std::move(config)),
      m_checkpoint(std::move(checkpoint)),
      m_weights(std::move(weights)),
      m_groups(options.parallel != nullptr ? options.parallel : dist::make_single_groups()),
      m_shard(make_shard_layout(m_config, options.parallel.get())),
      m_cache(m_shard.layer_end - m_shard.layer_begin, m_config.kv_lora_rank + m_config.qk_rope_head_dim,
              kKvBlockSize / m_shard.dcp_size, cache_dtype(options.kv_cache_dtype)) {
    shard_weights(m_weights, m_config, m_shard);
    const cpu::YarnParams yarn = yarn_params(m_config.rope_scaling);
    m_inv_freq = cpu::yarn_inv_freq(m_config.qk_rope_head_dim, m_config.rope_theta, yarn);
    m_rope_scale = cpu::yarn_cos_sin_scale(yarn);
    m_softmax_scale = static_cast<float>(m_config.softmax_scale());
    if (options.num_threads > 0) {
        omp_set_num_threads(options.num_threads);
    }
}

void DeepseekV3Model::linear(const float* x, int64_t m, const LinearWeight& w, float* y) const {
    cpu::linear(x, m, w.weight.dim(1), w.weight, w.scale(), y, m_config.weight_block_n, m_config.weight_block_k);
}

void DeepseekV3Model::check_batch(const ForwardBatch& b) const {
    const int64_t t_count = b.num_tokens();
    const int64_t seqs = b.num_seqs();
    if (t_count == 0 && seqs == 0 && b.logits_indices.empty()) {
        return;  // an empty (dummy) step: ForwardBatch{} or query_start = {0}
    }
    K2_CHECK(b.positions.size() == b.token_ids.size() && b.slot_mapping.size() == b.token_ids.size(),
             "forward batch: {} tokens but {} positions and {} slots", t_count, b.positions.size(),
             b.slot_mapping.size());
    K2_CHECK(b.query_start.size() == static_cast<size_t>(seqs + 1) && b.query_start.front() == 0 &&
                 b.query_start.back() == t_count,
             "forward batch: query_start must have num_seqs + 1 entries from 0 to num_tokens");
    K2_CHECK(b.max_blocks_per_seq >= 0 && b.block_tables.size() == static_cast<size_t>(seqs * b.max_blocks_per_seq),
             "forward batch: block_tables has {} entries, expected {} x {}", b.block_tables.size(), seqs,
             b.max_blocks_per_seq);
    for (int64_t s = 0; s < seqs; ++s) {
        K2_CHECK(b.query_start[s] <= b.query_start[s + 1], "forward batch: query_start is not ascending");
        for (int32_t t = b.query_start[s]; t < b.query_start[s + 1]; ++t) {
            K2_CHECK(b.positions[t] >= 0 && b.positions[t] < b.seq_lens[s],
                     "forward batch: token {} has position {} outside its sequence length {}", t, b.positions[t],
                     b.seq_lens[s]);
        }
    }
    for (const int32_t row : b.logits_indices) {
        K2_CHECK(row >= 0 && row < t_count, "forward batch: logits index {} outside the {} tokens", row, t_count);
    }
    K2_CHECK(m_cache.num_blocks() > 0 || t_count == 0, "forward: the KV cache is not allocated");
}

Tensor DeepseekV3Model::forward(const ForwardBatch& batch) {
    check_batch(batch);
    const int64_t t_count = batch.num_tokens();
    const int64_t hidden = m_config.hidden_size;
    const auto eps = static_cast<float>(m_config.rms_norm_eps);
    const size_t act = static_cast<size_t>(t_count * hidden);
    std::vector<float> h;         // [T, hidden] residual stream
    std::vector<float> x(act);    // [T, hidden] normed input of a sublayer
    std::vector<float> out(act);  // [T, hidden] sublayer output (this rank's partial sum under TP)
    stage_input(batch, h);
    for (int l = m_shard.layer_begin; l < m_shard.layer_end; ++l) {
        const LayerWeights& w = m_weights.layers[static_cast<size_t>(l)];
        cpu::rms_norm(h.data(), t_count, hidden, w.input_norm, eps, x.data());
        attention(l, x.data(), batch, out.data());
        tp_all_reduce(out.data(), act);
        add_into(h.data(), out.data(), act);
        cpu::rms_norm(h.data(), t_count, hidden, w.post_attention_norm, eps, x.data());
        if (w.is_moe) {
            moe(w, x.data(), t_count, out.data());
        } else {
            mlp(w.dense, x.data(), t_count, out.data());
        }
        tp_all_reduce(out.data(), act);
        add_into(h.data(), out.data(), act);
    }
    if (!m_shard.last_stage()) {
        if (act > 0) {
            m_groups->pp->send(h.data(), act, DType::F32, m_shard.pp_rank + 1);
        }
        return pipeline_logits(batch, Tensor());
    }
    return pipeline_logits(batch, compute_logits(batch, h));
}

// q [T, heads, nope + rope] (q_pe roped) and the latent entries kv [T, kv_lora_rank + rope] (c_kv normed, k_pe
// roped), the latter written to the layer's cache at the batch's slots.
void DeepseekV3Model::project_qkv(int layer, const float* x, const ForwardBatch& b, std::vector<float>& q,
                                  std::vector<float>& kv) {
    const LayerWeights& w = m_weights.layers[static_cast<size_t>(layer)];
    const ModelConfig& c = m_config;
    const int64_t t_count = b.num_tokens();
    const int64_t heads = m_shard.num_heads;
    const int64_t lat = c.kv_lora_rank;
    const int64_t rope = c.qk_rope_head_dim;
    const int64_t entry = lat + rope;
    q.resize(static_cast<size_t>(t_count * heads * c.qk_head_dim()));
    if (c.q_lora_rank > 0) {
        std::vector<float> qa(static_cast<size_t>(t_count * c.q_lora_rank));  // [T, q_lora_rank]
        linear(x, t_count, w.q_a, qa.data());
        cpu::rms_norm(qa.data(), t_count, c.q_lora_rank, w.q_a_norm, kLoraNormEps, qa.data());
        linear(qa.data(), t_count, w.q_b, q.data());
    } else {
        linear(x, t_count, w.q_proj, q.data());
    }
    cpu::rope_interleaved(q.data() + c.qk_nope_head_dim, t_count, heads, rope, heads * c.qk_head_dim(), c.qk_head_dim(),
                          b.positions.data(), m_inv_freq.data(), m_rope_scale);
    kv.resize(static_cast<size_t>(t_count * entry));
    linear(x, t_count, w.kv_a, kv.data());
    cpu::rms_norm(kv.data(), t_count, lat, entry, w.kv_a_norm, kLoraNormEps, kv.data(), entry);
    cpu::rope_interleaved(kv.data() + lat, t_count, 1, rope, entry, 0, b.positions.data(), m_inv_freq.data(),
                          m_rope_scale);
    write_latent(layer, kv, b);
}

void DeepseekV3Model::attention(int layer, const float* x, const ForwardBatch& b, float* out) {
    const LayerWeights& w = m_weights.layers[static_cast<size_t>(layer)];
    const ModelConfig& c = m_config;
    const int64_t t_count = b.num_tokens();
    const int64_t heads = m_shard.num_heads;
    const int64_t nope = c.qk_nope_head_dim;
    const int64_t qk = c.qk_head_dim();
    const int64_t lat = c.kv_lora_rank;
    const int64_t entry = lat + c.qk_rope_head_dim;
    std::vector<float> q;   // [T, heads, nope + rope]
    std::vector<float> kv;  // [T, kv_lora_rank + rope]
    project_qkv(layer, x, b, q, kv);

    // Absorb W_UK into the query: q_abs[t, h] = [W_UK_h^T q_nope | rope(q_pe)].
    std::vector<float> q_abs(static_cast<size_t>(t_count * heads * entry));  // [T, heads, kv_lora_rank + rope]
#pragma omp parallel for schedule(static) if (t_count * heads * nope * lat >= kParallelMinWork)
    for (int64_t th = 0; th < t_count * heads; ++th) {
        const int64_t h = th % heads;
        const float* qn = q.data() + th * qk;
        float* dst = q_abs.data() + th * entry;
        std::fill(dst, dst + lat, 0.0f);
        for (int64_t i = 0; i < nope; ++i) {
            const float* uk = w.w_uk.data() + (h * nope + i) * lat;
            const float qi = qn[i];
#pragma omp simd
            for (int64_t j = 0; j < lat; ++j)
                dst[j] += qi * uk[j];
        }
        std::copy(qn + nope, qn + qk, dst + lat);
    }

    std::vector<float> o_lat(static_cast<size_t>(t_count * heads * lat));  // [T, heads, kv_lora_rank]
    if (m_shard.dcp_size > 1) {
        attend_dcp(layer, q_abs, b, o_lat);
    } else {
        attend(layer, q_abs, b, o_lat);
    }
    output_projection(layer, o_lat, t_count, out);
}

// o[t, h] = W_UV_h o_lat[t, h] for every head, then o_proj over the concatenated heads: out [T, hidden].
void DeepseekV3Model::output_projection(int layer, const std::vector<float>& o_lat, int64_t t_count, float* out) {
    const LayerWeights& w = m_weights.layers[static_cast<size_t>(layer)];
    const int64_t heads = m_shard.num_heads;
    const int64_t lat = m_config.kv_lora_rank;
    const int64_t v = m_config.v_head_dim;
    std::vector<float> o(static_cast<size_t>(t_count * heads * v));  // [T, heads * v_head_dim]
#pragma omp parallel for schedule(static) if (t_count * heads * v * lat >= kParallelMinWork)
    for (int64_t th = 0; th < t_count * heads; ++th) {
        const int64_t h = th % heads;
        const float* ol = o_lat.data() + th * lat;
        for (int64_t i = 0; i < v; ++i) {
            const float* uv = w.w_uv.data() + (h * v + i) * lat;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int64_t j = 0; j < lat; ++j)
                acc += uv[j] * ol[j];
            o[static_cast<size_t>(th * v + i)] = acc;
        }
    }
    linear(o.data(), t_count, w.o_proj, out);
}

void DeepseekV3Model::mlp(const MlpWeights& w, const float* x, int64_t num_tokens, float* out) {
    const int64_t inter = w.gate.out_features();
    std::vector<float> gate(static_cast<size_t>(num_tokens * inter));  // [T, inter]
    std::vector<float> up(static_cast<size_t>(num_tokens * inter));    // [T, inter]
    linear(x, num_tokens, w.gate, gate.data());
    linear(x, num_tokens, w.up, up.data());
    cpu::silu_mul(gate.data(), up.data(), num_tokens, inter, inter, gate.data());
    linear(gate.data(), num_tokens, w.down, out);
}

void DeepseekV3Model::moe(const LayerWeights& w, const float* x, int64_t num_tokens, float* out) {
    const ModelConfig& c = m_config;
    const int64_t hidden = c.hidden_size;
    const int64_t experts = c.n_routed_experts;
    const int64_t top_k = c.num_experts_per_tok;
    std::vector<float> logits(static_cast<size_t>(num_tokens * experts));  // [T, experts] fp32 router logits
    cpu::linear(x, num_tokens, hidden, w.router, nullptr, logits.data());
    std::vector<int32_t> ids(static_cast<size_t>(num_tokens * top_k));    // [T, top_k]
    std::vector<float> weights(static_cast<size_t>(num_tokens * top_k));  // [T, top_k]
    cpu::MoeRouterArgs r;
    r.router_logits = logits.data();
    r.correction_bias = w.router_bias.data();
    r.num_tokens = num_tokens;
    r.num_experts = experts;
    r.n_group = c.n_group;
    r.topk_group = c.topk_group;
    r.top_k = top_k;
    r.norm_topk_prob = c.norm_topk_prob;
    r.routed_scaling_factor = static_cast<float>(c.routed_scaling_factor);
    r.topk_ids = ids.data();
    r.topk_weights = weights.data();
    cpu::moe_route(r);

    if (m_shard.expert_parallel) {
        routed_experts_ep(w, x, num_tokens, ids.data(), weights.data(), out);
    } else {
        routed_experts_local(w, x, num_tokens, ids.data(), weights.data(), out);
    }
    if (w.has_shared) {
        std::vector<float> shared(static_cast<size_t>(num_tokens * hidden));  // [T, hidden]
        mlp(w.shared, x, num_tokens, shared.data());
        add_into(out, shared.data(), shared.size());
    }
}

// Every routed expert on this rank (whole, or its TP slice): out [T, hidden] = sum_k weight_k * expert_k(x).
void DeepseekV3Model::routed_experts_local(const LayerWeights& w, const float* x, int64_t num_tokens,
                                           const int32_t* ids, const float* weights, float* out) {
    const int64_t hidden = m_config.hidden_size;
    const int64_t top_k = m_config.num_experts_per_tok;
    // Group the (token, weight) pairs by expert, then run each expert on its gathered tokens.
    std::vector<std::vector<std::pair<int64_t, float>>> routed(static_cast<size_t>(m_config.n_routed_experts));
    for (int64_t i = 0; i < num_tokens * top_k; ++i) {
        routed[static_cast<size_t>(ids[i])].emplace_back(i / top_k, weights[i]);
    }
    std::fill(out, out + num_tokens * hidden, 0.0f);
    std::vector<int64_t> rows;  // [n_e] tokens routed to expert e
    std::vector<float> ys;      // [n_e, hidden]
    for (size_t e = 0; e < routed.size(); ++e) {
        const auto& list = routed[e];
        if (list.empty())
            continue;
        rows.clear();
        for (const auto& [t, weight] : list) {
            rows.push_back(t);
        }
        expert_on_rows(w.experts[e], x, rows, ys);
        for (size_t i = 0; i < list.size(); ++i) {
            const auto [t, weight] = list[i];
            float* dst = out + t * hidden;
            const float* y = ys.data() + static_cast<int64_t>(i) * hidden;
            for (int64_t j = 0; j < hidden; ++j)
                dst[j] += weight * y[j];
        }
    }
}

// ys [rows, hidden] = expert(x[rows]).  x: [*, hidden]
void DeepseekV3Model::expert_on_rows(const MlpWeights& w, const float* x, std::span<const int64_t> rows,
                                     std::vector<float>& ys) {
    const int64_t hidden = m_config.hidden_size;
    const auto n = static_cast<int64_t>(rows.size());
    std::vector<float> xs(static_cast<size_t>(n * hidden));  // [n, hidden]
    for (int64_t i = 0; i < n; ++i) {
        std::copy_n(x + rows[static_cast<size_t>(i)] * hidden, hidden, xs.data() + i * hidden);
    }
    ys.resize(xs.size());
    mlp(w, xs.data(), n, ys.data());
}

}  // namespace k2

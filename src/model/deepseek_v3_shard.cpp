#include "model/deepseek_v3_shard.h"

#include <algorithm>
#include <cstring>
#include <memory>

#include "backend/cpu/linear.h"
#include "core/error.h"
#include "model/deepseek_v3.h"
#include "model/model.h"

namespace k2 {

namespace {

void check_divisible(int64_t value, int64_t by, const char* field, const char* flag) {
    K2_CHECK(value % by == 0, "config.json: {} = {} is not divisible by {} = {}", field, value, flag, by);
}

// A row-range view of `t` ([rows, ...] row-major) that keeps `t`'s storage alive.
Tensor row_view(const Tensor& t, int64_t begin, int64_t count) {
    std::vector<int64_t> shape = t.shape();
    const size_t row_bytes = t.nbytes() / static_cast<size_t>(shape[0]);
    shape[0] = count;
    auto keep = std::make_shared<Tensor>(t);
    auto* data = const_cast<uint8_t*>(t.data_as<uint8_t>()) + row_bytes * static_cast<size_t>(begin);
    return Tensor::view(t.dtype(), shape, data, keep);
}

bool block_aligned(int64_t begin, int64_t count, int64_t total, int64_t block) {
    return begin % block == 0 && (count % block == 0 || begin + count == total);
}

// Rows [begin, begin + count) of W as F32 with columns [col_begin, col_begin + cols).
LinearWeight dequantized(const LinearWeight& w, const ModelConfig& c, int64_t begin, int64_t count, int64_t col_begin,
                         int64_t cols) {
    const int64_t in = w.weight.dim(1);
    LinearWeight out;
    out.weight = Tensor::zeros(DType::F32, {count, cols});  // [count, cols]
    std::vector<float> row(static_cast<size_t>(in));        // [in]
    for (int64_t r = 0; r < count; ++r) {
        cpu::dequantize_row(w.weight, w.scale(), begin + r, row.data(), c.weight_block_n, c.weight_block_k);
        std::copy(row.begin() + col_begin, row.begin() + col_begin + cols, out.weight.data_as<float>() + r * cols);
    }
    return out;
}

LinearWeight slice_rows(const LinearWeight& w, const ModelConfig& c, int64_t begin, int64_t count) {
    const int64_t out = w.weight.dim(0);
    if (begin == 0 && count == out) {
        return w;
    }
    if (w.weight.dtype() != DType::F8_E4M3) {
        return {row_view(w.weight, begin, count), Tensor()};
    }
    if (!block_aligned(begin, count, out, c.weight_block_n)) {
        return dequantized(w, c, begin, count, 0, w.weight.dim(1));
    }
    const int64_t bn = c.weight_block_n;
    return {row_view(w.weight, begin, count), row_view(w.scale_inv, begin / bn, (count + bn - 1) / bn)};
}

LinearWeight slice_cols(const LinearWeight& w, const ModelConfig& c, int64_t begin, int64_t count) {
    const int64_t out = w.weight.dim(0);
    const int64_t in = w.weight.dim(1);
    if (begin == 0 && count == in) {
        return w;
    }
    if (w.weight.dtype() != DType::F8_E4M3 || !block_aligned(begin, count, in, c.weight_block_k)) {
        return dequantized(w, c, 0, out, begin, count);
    }
    // FP8 kept: copy the column range of every row and the matching scale columns.
    const int64_t bk = c.weight_block_k;
    const int64_t scale_cols = w.scale_inv.dim(1);
    const int64_t s_begin = begin / bk;
    const int64_t s_count = (count + bk - 1) / bk;
    LinearWeight s;
    s.weight = Tensor::zeros(DType::F8_E4M3, {out, count});                  // [out, count]
    s.scale_inv = Tensor::zeros(DType::F32, {w.scale_inv.dim(0), s_count});  // [out / bn, count / bk]
    for (int64_t r = 0; r < out; ++r) {
        std::memcpy(s.weight.data_as<uint8_t>() + r * count, w.weight.data_as<uint8_t>() + r * in + begin,
                    static_cast<size_t>(count));
    }
    for (int64_t r = 0; r < w.scale_inv.dim(0); ++r) {
        std::copy_n(w.scale_inv.data_as<float>() + r * scale_cols + s_begin, s_count,
                    s.scale_inv.data_as<float>() + r * s_count);
    }
    return s;
}

// gate/up by rows, down by columns: a TP slice of the intermediate dimension.
MlpWeights slice_mlp(const MlpWeights& m, const ModelConfig& c, const ShardLayout& s) {
    const int64_t inter = m.gate.out_features();
    const int64_t begin = s.slice_begin(inter);
    const int64_t size = s.slice_size(inter);
    return {slice_rows(m.gate, c, begin, size), slice_rows(m.up, c, begin, size), slice_cols(m.down, c, begin, size)};
}

void shard_attention(LayerWeights& w, const ModelConfig& c, const ShardLayout& s) {
    const int64_t qk = c.qk_head_dim();
    if (c.q_lora_rank > 0) {
        w.q_b = slice_rows(w.q_b, c, s.head_begin * qk, s.num_heads * qk);
    } else {
        w.q_proj = slice_rows(w.q_proj, c, s.head_begin * qk, s.num_heads * qk);
    }
    const auto head_range = [&](std::vector<float>& v, int64_t per_head) {
        v = std::vector<float>(v.begin() + s.head_begin * per_head,
                               v.begin() + (s.head_begin + s.num_heads) * per_head);
    };
    head_range(w.w_uk, c.qk_nope_head_dim * c.kv_lora_rank);
    head_range(w.w_uv, c.v_head_dim * c.kv_lora_rank);
    w.o_proj = slice_cols(w.o_proj, c, s.head_begin * c.v_head_dim, s.num_heads * c.v_head_dim);
}

void shard_feed_forward(LayerWeights& w, const ModelConfig& c, const ShardLayout& s) {
    if (!w.is_moe) {
        w.dense = slice_mlp(w.dense, c, s);
        return;
    }
    for (int64_t e = 0; e < static_cast<int64_t>(w.experts.size()); ++e) {
        MlpWeights& expert = w.experts[static_cast<size_t>(e)];
        if (!s.expert_parallel) {
            expert = slice_mlp(expert, c, s);
        } else if (e < s.expert_begin || e >= s.expert_begin + s.num_experts) {
            expert = MlpWeights{};  // held by another EP rank
        }
    }
    if (w.has_shared) {
        w.shared = slice_mlp(w.shared, c, s);
    }
}

}  // namespace

ShardLayout make_shard_layout(const ModelConfig& c, const dist::ParallelGroups* groups) {
    ShardLayout s;
    s.num_heads = c.num_attention_heads;
    s.vocab_size = c.vocab_size;
    s.num_experts = c.n_routed_experts;
    s.layer_end = c.num_hidden_layers;
    if (groups == nullptr || groups->config.is_single()) {
        return s;
    }
    const dist::ParallelConfig& p = groups->config;
    p.validate();
    s.tp_size = p.tensor_parallel_size;
    s.tp_rank = groups->coord.tp;
    check_divisible(c.num_attention_heads, s.tp_size, "num_attention_heads", "--tensor-parallel-size");
    check_divisible(c.vocab_size, s.tp_size, "vocab_size", "--tensor-parallel-size");
    check_divisible(c.intermediate_size, s.tp_size, "intermediate_size", "--tensor-parallel-size");
    s.num_heads = s.slice_size(c.num_attention_heads);
    s.head_begin = s.slice_begin(c.num_attention_heads);
    s.vocab_size = s.slice_size(c.vocab_size);
    s.vocab_begin = s.slice_begin(c.vocab_size);
    s.expert_parallel = p.enable_expert_parallel && c.n_routed_experts > 0;
    if (s.expert_parallel) {
        s.ep_size = p.expert_parallel_size();
        s.ep_rank = groups->ep->rank();
        check_divisible(c.n_routed_experts, s.ep_size, "n_routed_experts", "the expert-parallel size (tp x dp)");
        s.num_experts = c.n_routed_experts / s.ep_size;
        s.expert_begin = s.num_experts * s.ep_rank;
    } else if (c.n_routed_experts > 0) {
        check_divisible(c.moe_intermediate_size, s.tp_size, "moe_intermediate_size", "--tensor-parallel-size");
    }
    s.pp_size = p.pipeline_parallel_size;
    s.pp_rank = groups->coord.pp;
    K2_CHECK(s.pp_size <= c.num_hidden_layers, "--pipeline-parallel-size {} exceeds num_hidden_layers {}", s.pp_size,
             c.num_hidden_layers);
    s.layer_begin = c.num_hidden_layers * s.pp_rank / s.pp_size;
    s.layer_end = c.num_hidden_layers * (s.pp_rank + 1) / s.pp_size;
    s.dcp_size = p.decode_context_parallel_size;
    K2_CHECK(kKvBlockSize % s.dcp_size == 0, "--decode-context-parallel-size {} must divide the KV block size {}",
             s.dcp_size, kKvBlockSize);
    s.dcp_rank = groups->dcp_rank();
    return s;
}

void shard_weights(DeepseekV3Weights& w, const ModelConfig& c, const ShardLayout& s) {
    for (int l = 0; l < c.num_hidden_layers; ++l) {
        LayerWeights& layer = w.layers[static_cast<size_t>(l)];
        if (l < s.layer_begin || l >= s.layer_end) {
            layer = LayerWeights{};  // another pipeline stage's
            continue;
        }
        if (s.tp_size > 1) {
            shard_attention(layer, c, s);
        }
        if (s.tp_size > 1 || s.expert_parallel) {
            shard_feed_forward(layer, c, s);
        }
    }
    w.embed_tokens = s.first_stage() ? row_view(w.embed_tokens, s.vocab_begin, s.vocab_size) : Tensor();
    if (s.last_stage()) {
        w.lm_head = slice_rows(w.lm_head, c, s.vocab_begin, s.vocab_size);
    } else {
        w.lm_head = LinearWeight{};
        w.final_norm = Tensor();
    }
}

}  // namespace k2

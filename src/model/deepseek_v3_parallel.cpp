// The parts of DeepseekV3Model's forward that depend on how the job is split (deepseek_v3_shard.h): the
// vocabulary-parallel embedding and lm_head, TP all-reduces, pipeline hand-offs, the decode-context-parallel
// latent cache and attention, and expert-parallel dispatch/combine. With a single rank every collective is a
// SingleCommunicator no-op and each function reduces to the plain computation.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend/cpu/attention.h"
#include "backend/cpu/embedding.h"
#include "backend/cpu/norm.h"
#include "dist/dcp.h"
#include "model/deepseek_v3.h"

namespace k2 {

namespace {

std::vector<int64_t> prefix_sums(const std::vector<int64_t>& counts) {
    std::vector<int64_t> displs(counts.size(), 0);
    std::partial_sum(counts.begin(), counts.end() - 1, displs.begin() + 1);
    return displs;
}

// What each peer sends back, and where: swaps the roles of one all_to_all_v's counts.
struct AllToAllPlan {
    std::vector<int64_t> send_counts, send_displs, recv_counts, recv_displs;
};

AllToAllPlan exchange_counts(dist::Communicator& comm, std::vector<int64_t> send_counts) {
    const auto n = static_cast<size_t>(comm.size());
    AllToAllPlan plan;
    plan.recv_counts.assign(n, 0);
    const std::vector<int64_t> ones(n, 1);
    std::vector<int64_t> unit_displs(n);
    std::iota(unit_displs.begin(), unit_displs.end(), 0);
    comm.all_to_all_v(send_counts.data(), ones, unit_displs, plan.recv_counts.data(), ones, unit_displs, DType::I64);
    plan.send_counts = std::move(send_counts);
    plan.send_displs = prefix_sums(plan.send_counts);
    plan.recv_displs = prefix_sums(plan.recv_counts);
    return plan;
}

std::vector<int64_t> scaled(const std::vector<int64_t>& v, int64_t by) {
    std::vector<int64_t> out(v.size());
    std::transform(v.begin(), v.end(), out.begin(), [by](int64_t x) { return x * by; });
    return out;
}

}  // namespace

void DeepseekV3Model::tp_all_reduce(float* x, size_t count) {
    m_groups->tp->all_reduce_sum(x, count, DType::F32);
}

void DeepseekV3Model::stage_input(const ForwardBatch& b, std::vector<float>& h) {
    const int64_t t_count = b.num_tokens();
    const int64_t hidden = m_config.hidden_size;
    h.assign(static_cast<size_t>(t_count * hidden), 0.0f);
    if (!m_shard.first_stage()) {
        if (!h.empty()) {
            m_groups->pp->recv(h.data(), h.size(), DType::F32, m_shard.pp_rank - 1);
        }
        return;
    }
    if (m_shard.tp_size == 1) {
        cpu::embedding(m_weights.embed_tokens, b.token_ids.data(), t_count, h.data());
        return;
    }
    // Vocabulary-parallel: rows of other shards stay zero here and arrive with the all-reduce.
    for (int64_t t = 0; t < t_count; ++t) {
        const int32_t local = b.token_ids[static_cast<size_t>(t)] - static_cast<int32_t>(m_shard.vocab_begin);
        if (local >= 0 && local < m_shard.vocab_size) {
            cpu::embedding(m_weights.embed_tokens, &local, 1, h.data() + t * hidden);
        }
    }
    tp_all_reduce(h.data(), h.size());
}

Tensor DeepseekV3Model::compute_logits(const ForwardBatch& b, const std::vector<float>& h) {
    const int64_t hidden = m_config.hidden_size;
    const auto rows = static_cast<int64_t>(b.logits_indices.size());
    std::vector<float> last(static_cast<size_t>(rows * hidden));  // [rows, hidden]
    for (int64_t r = 0; r < rows; ++r) {
        const float* src = h.data() + b.logits_indices[static_cast<size_t>(r)] * hidden;
        std::copy(src, src + hidden, last.data() + r * hidden);
    }
    cpu::rms_norm(last.data(), rows, hidden, m_weights.final_norm, static_cast<float>(m_config.rms_norm_eps),
                  last.data());
    const int64_t vocab = m_config.vocab_size;
    Tensor logits = Tensor::zeros(DType::F32, {rows, vocab});  // [rows, vocab]
    if (m_shard.tp_size == 1) {
        linear(last.data(), rows, m_weights.lm_head, logits.data_as<float>());
        return logits;
    }
    const int64_t shard = m_shard.vocab_size;
    std::vector<float> local(static_cast<size_t>(rows * shard));                       // [rows, vocab / tp]
    std::vector<float> gathered(static_cast<size_t>(rows * shard * m_shard.tp_size));  // [tp, rows, vocab / tp]
    linear(last.data(), rows, m_weights.lm_head, local.data());
    m_groups->tp->all_gather(local.data(), gathered.data(), local.size(), DType::F32);
    for (int64_t d = 0; d < m_shard.tp_size; ++d) {
        for (int64_t r = 0; r < rows; ++r) {
            const float* src = gathered.data() + (d * rows + r) * shard;
            std::copy(src, src + shard, logits.data_as<float>() + r * vocab + d * shard);
        }
    }
    return logits;
}

Tensor DeepseekV3Model::pipeline_logits(const ForwardBatch& b, Tensor logits) {
    if (m_shard.pp_size == 1) {
        return logits;
    }
    const auto rows = static_cast<int64_t>(b.logits_indices.size());
    const int64_t vocab = m_config.vocab_size;
    const bool leader_column = m_shard.tp_rank == 0;  // the pipeline of TP rank 0 carries the logits
    if (m_shard.last_stage()) {
        if (leader_column && rows > 0) {
            m_groups->pp->send(logits.data_as<float>(), static_cast<size_t>(rows * vocab), DType::F32, 0);
        }
        return logits;
    }
    if (m_shard.first_stage() && leader_column) {
        Tensor received = Tensor::zeros(DType::F32, {rows, vocab});  // [rows, vocab]
        if (rows > 0) {
            m_groups->pp->recv(received.data_as<float>(), static_cast<size_t>(rows * vocab), DType::F32,
                               m_shard.pp_size - 1);
        }
        return received;
    }
    return Tensor::zeros(DType::F32, {0, vocab});
}

// Slot s = block * kKvBlockSize + offset; with DCP token offset o lives on DCP rank o % dcp at local offset o / dcp
// (vLLM's interleave of 1: position p goes to rank p % dcp, and kKvBlockSize is a multiple of dcp).
void DeepseekV3Model::write_latent(int layer, const std::vector<float>& kv, const ForwardBatch& b) {
    const cpu::LatentCacheView cache = m_cache.layer(layer - m_shard.layer_begin);
    const int64_t t_count = b.num_tokens();
    if (m_shard.dcp_size == 1) {
        cpu::write_latent_cache(kv.data(), t_count, b.slot_mapping.data(), cache);
        return;
    }
    const int64_t dcp = m_shard.dcp_size;
    std::vector<int64_t> local(static_cast<size_t>(t_count));  // [T] local slot, -1 when stored elsewhere
    for (int64_t t = 0; t < t_count; ++t) {
        const int64_t slot = b.slot_mapping[static_cast<size_t>(t)];
        const int64_t offset = slot % kKvBlockSize;
        const bool mine = slot >= 0 && offset % dcp == m_shard.dcp_rank;
        local[static_cast<size_t>(t)] = mine ? slot / kKvBlockSize * (kKvBlockSize / dcp) + offset / dcp : -1;
    }
    cpu::write_latent_cache(kv.data(), t_count, local.data(), cache);
}

void DeepseekV3Model::attend(int layer, const std::vector<float>& q_abs, const ForwardBatch& b,
                             std::vector<float>& o_lat) {
    if (b.num_seqs() == 0) {
        return;  // a dummy step
    }
    cpu::MlaAttentionArgs args;
    args.q = q_abs.data();
    args.num_tokens = b.num_tokens();
    args.num_heads = m_shard.num_heads;
    args.kv_lora_rank = m_config.kv_lora_rank;
    args.rope_dim = m_config.qk_rope_head_dim;
    args.cache = m_cache.layer(layer - m_shard.layer_begin);
    args.block_size = m_cache.block_size();
    args.block_tables = b.block_tables.data();
    args.max_blocks_per_seq = b.max_blocks_per_seq;
    args.query_start = b.query_start.data();
    args.num_seqs = b.num_seqs();
    args.positions = b.positions.data();
    args.softmax_scale = m_softmax_scale;
    args.out = o_lat.data();
    cpu::mla_attention_absorbed(args);
}

// DCP (vllm.md section 5): the DCP group's queries are all-gathered, each rank attends over the tokens it stores
// (partial output + log-sum-exp per head), the partials are rescaled to the global log-sum-exp and summed by a
// reduce-scatter that hands every rank back its own heads.
void DeepseekV3Model::attend_dcp(int layer, const std::vector<float>& q_abs, const ForwardBatch& b,
                                 std::vector<float>& o_lat) {
    dist::Communicator& comm = *m_groups->dcp;
    const cpu::LatentCacheView cache = m_cache.layer(layer - m_shard.layer_begin);
    const int64_t t_count = b.num_tokens();
    const int64_t dcp = m_shard.dcp_size;
    const int64_t rank = m_shard.dcp_rank;
    const int64_t heads = m_shard.num_heads;
    const int64_t group_heads = heads * dcp;
    const int64_t lat = m_config.kv_lora_rank;
    const int64_t entry = cache.entry_dim;
    std::vector<float> q_all(static_cast<size_t>(dcp * t_count * heads * entry));  // [dcp, T, heads, entry]
    comm.all_gather(q_abs.data(), q_all.data(), q_abs.size(), DType::F32);
    std::vector<float> out(static_cast<size_t>(t_count * group_heads * lat));  // [T, group_heads, lat]
    std::vector<float> lse(static_cast<size_t>(t_count * group_heads));        // [T, group_heads]
    std::vector<float> q_t(static_cast<size_t>(group_heads * entry));          // [group_heads, entry]
    for (int64_t s = 0; s < b.num_seqs(); ++s) {
        const int32_t seq_len = b.seq_lens[static_cast<size_t>(s)];
        const int64_t n_local = dist::dcp_local_token_count(seq_len, static_cast<int>(rank), static_cast<int>(dcp));
        std::vector<float> k(static_cast<size_t>(n_local * entry));  // [n_local, entry] this rank's tokens
        std::vector<float> v(static_cast<size_t>(n_local * lat));    // [n_local, lat]
        for (int64_t i = 0; i < n_local; ++i) {
            const int64_t pos = i * dcp + rank;
            const int32_t block = b.block_tables[static_cast<size_t>(s * b.max_blocks_per_seq + pos / kKvBlockSize)];
            const int64_t slot = int64_t{block} * (kKvBlockSize / dcp) + pos % kKvBlockSize / dcp;
            cpu::read_latent_entry(cache, slot, k.data() + i * entry);
            std::copy_n(k.data() + i * entry, lat, v.data() + i * lat);
        }
        for (int32_t t = b.query_start[static_cast<size_t>(s)]; t < b.query_start[static_cast<size_t>(s) + 1]; ++t) {
            for (int64_t d = 0; d < dcp; ++d) {
                const float* src = q_all.data() + ((d * t_count + t) * heads) * entry;
                std::copy_n(src, heads * entry, q_t.data() + d * heads * entry);
            }
            const int64_t visible = dist::dcp_local_token_count(b.positions[static_cast<size_t>(t)] + 1,
                                                                static_cast<int>(rank), static_cast<int>(dcp));
            dist::partial_attention(
                q_t, std::span(k).first(static_cast<size_t>(visible * entry)),
                std::span(v).first(static_cast<size_t>(visible * lat)), static_cast<int>(group_heads),
                static_cast<int>(entry), static_cast<int>(lat), m_softmax_scale,
                std::span(out).subspan(static_cast<size_t>(t * group_heads * lat),
                                       static_cast<size_t>(group_heads * lat)),
                std::span(lse).subspan(static_cast<size_t>(t * group_heads), static_cast<size_t>(group_heads)));
        }
    }
    std::vector<float> lse_all(static_cast<size_t>(dcp * t_count * group_heads));  // [dcp, T, group_heads]
    comm.all_gather(lse.data(), lse_all.data(), lse.size(), DType::F32);
    std::vector<float> lse_t(static_cast<size_t>(dcp * group_heads));               // [dcp, group_heads]
    std::vector<float> by_owner(static_cast<size_t>(dcp * t_count * heads * lat));  // [dcp, T, heads, lat]
    for (int64_t t = 0; t < t_count; ++t) {
        for (int64_t d = 0; d < dcp; ++d) {
            std::copy_n(lse_all.data() + (d * t_count + t) * group_heads, group_heads, lse_t.data() + d * group_heads);
        }
        std::span<float> out_t =
            std::span(out).subspan(static_cast<size_t>(t * group_heads * lat), static_cast<size_t>(group_heads * lat));
        dist::correct_partial_output(out_t, lse_t, static_cast<int>(rank), static_cast<int>(dcp),
                                     static_cast<int>(group_heads), static_cast<int>(lat));
        for (int64_t d = 0; d < dcp; ++d) {
            std::copy_n(out_t.data() + d * heads * lat, heads * lat,
                        by_owner.data() + ((d * t_count + t) * heads) * lat);
        }
    }
    comm.reduce_scatter_sum(by_owner.data(), o_lat.data(), o_lat.size(), DType::F32);
}

// EP: the TP group's ranks hold the same tokens, so TP rank r dispatches only its r-th slice of them; each
// (token, expert) pair travels to the rank holding that expert and its output comes back to be weighted and
// summed. Other slices stay zero here and arrive with the TP all-reduce after the layer. A rank with no tokens
// still joins both exchanges (a DP replica's dummy step).
void DeepseekV3Model::routed_experts_ep(const LayerWeights& w, const float* x, int64_t num_tokens, const int32_t* ids,
                                        const float* weights, float* out) {
    dist::Communicator& comm = *m_groups->ep;
    const int64_t hidden = m_config.hidden_size;
    const int64_t top_k = m_config.num_experts_per_tok;
    const int64_t slice_begin = num_tokens * m_shard.tp_rank / m_shard.tp_size;
    const int64_t slice_end = num_tokens * (m_shard.tp_rank + 1) / m_shard.tp_size;
    std::fill(out, out + num_tokens * hidden, 0.0f);

    // Pairs of the slice, ordered by destination rank.
    std::vector<int64_t> pairs;  // [P] index t * top_k + k
    for (int64_t i = slice_begin * top_k; i < slice_end * top_k; ++i) {
        pairs.push_back(i);
    }
    const auto owner = [&](int64_t pair) { return ids[pair] / m_shard.num_experts; };
    std::stable_sort(pairs.begin(), pairs.end(), [&](int64_t a, int64_t b) { return owner(a) < owner(b); });
    std::vector<int64_t> counts(static_cast<size_t>(comm.size()), 0);
    std::vector<float> send_x(pairs.size() * static_cast<size_t>(hidden));  // [P, hidden]
    std::vector<int32_t> send_ids(pairs.size());                            // [P] global expert id
    for (size_t p = 0; p < pairs.size(); ++p) {
        ++counts[static_cast<size_t>(owner(pairs[p]))];
        std::copy_n(x + pairs[p] / top_k * hidden, hidden, send_x.data() + p * static_cast<size_t>(hidden));
        send_ids[p] = ids[pairs[p]];
    }
    const AllToAllPlan plan = exchange_counts(comm, counts);
    const int64_t received = std::accumulate(plan.recv_counts.begin(), plan.recv_counts.end(), int64_t{0});
    std::vector<float> recv_x(static_cast<size_t>(received * hidden));  // [R, hidden]
    std::vector<int32_t> recv_ids(static_cast<size_t>(received));       // [R]
    comm.all_to_all_v(send_x.data(), scaled(plan.send_counts, hidden), scaled(plan.send_displs, hidden), recv_x.data(),
                      scaled(plan.recv_counts, hidden), scaled(plan.recv_displs, hidden), DType::F32);
    comm.all_to_all_v(send_ids.data(), plan.send_counts, plan.send_displs, recv_ids.data(), plan.recv_counts,
                      plan.recv_displs, DType::I32);

    // Run each local expert on the pairs it received.
    std::vector<float> recv_y(recv_x.size());  // [R, hidden]
    std::vector<float> ys;                     // [n_e, hidden]
    for (int64_t e = m_shard.expert_begin; e < m_shard.expert_begin + m_shard.num_experts; ++e) {
        std::vector<int64_t> rows;
        for (int64_t r = 0; r < received; ++r) {
            if (recv_ids[static_cast<size_t>(r)] == e) {
                rows.push_back(r);
            }
        }
        if (rows.empty())
            continue;
        expert_on_rows(w.experts[static_cast<size_t>(e)], recv_x.data(), rows, ys);
        for (size_t i = 0; i < rows.size(); ++i) {
            std::copy_n(ys.data() + static_cast<int64_t>(i) * hidden, hidden, recv_y.data() + rows[i] * hidden);
        }
    }

    // Results travel back the way the inputs came; combine in the slice's rows.
    std::vector<float> back_y(send_x.size());  // [P, hidden]
    comm.all_to_all_v(recv_y.data(), scaled(plan.recv_counts, hidden), scaled(plan.recv_displs, hidden), back_y.data(),
                      scaled(plan.send_counts, hidden), scaled(plan.send_displs, hidden), DType::F32);
    for (size_t p = 0; p < pairs.size(); ++p) {
        float* dst = out + pairs[p] / top_k * hidden;
        const float weight = weights[pairs[p]];
        const float* y = back_y.data() + p * static_cast<size_t>(hidden);
        for (int64_t j = 0; j < hidden; ++j)
            dst[j] += weight * y[j];
    }
}

}  // namespace k2

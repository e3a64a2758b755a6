// The sublayers of DeepseekV3CudaModel: absorbed MLA attention, dense SwiGLU and the MoE (deepseek_v3_cuda.h).
#include <algorithm>
#include <cstdlib>
#include <string>

#include "backend/cuda/fp8_quant.h"
#include "backend/cuda/mla_decode.h"
#include "backend/cuda/mla_ops.h"
#include "backend/cuda/model_ops.h"
#include "backend/cuda/moe_layout.h"
#include "backend/cuda/moe_ops.h"
#include "backend/cuda/moe_prefill_gemm.h"
#include "backend/cuda/moe_router.h"
#include "model/cuda/cuda_workspace.h"
#include "model/cuda/deepseek_v3_cuda.h"
#include "model/cuda/mla_prefill_step.h"

namespace k2 {

namespace {

// HF builds q_a_layernorm / kv_a_layernorm with the RMSNorm class default, not config.rms_norm_eps.
constexpr float kLoraNormEps = 1e-6f;
// Up to this many tokens the experts run as one grouped launch with the row counts on the device (capturable in a
// CUDA graph); above it the prefill forms (below).
constexpr int64_t kGroupedDecodeMaxTokens = 64;

// Prefill: the one-launch wgmma grouped GEMM (moe_prefill_gemm.h; offsets stay on the device) unless
// K2_MOE_PREFILL_WGMMA=0 or it does not take the shapes: then the offsets come to the host once per layer and every
// expert gets a cuBLASLt call (on the lanes' streams).
bool prefill_wgmma_enabled() {
    static const bool enabled = [] {
        const char* value = std::getenv("K2_MOE_PREFILL_WGMMA");
        return value == nullptr || std::string(value) != "0";
    }();
    return enabled;
}

}  // namespace

void DeepseekV3CudaModel::attention(int layer, int64_t t_count, const cuda_model::StepBatch& b) {
    const ModelConfig& c = m_config;
    const cuda_model::DeviceLayer& w = m_weights.layers[static_cast<size_t>(layer)];
    cuda_model::Workspace& ws = *m_ws;
    const int heads = static_cast<int>(c.num_attention_heads);
    const int lat = static_cast<int>(c.kv_lora_rank);
    const int rope = static_cast<int>(c.qk_rope_head_dim);
    const int nope = static_cast<int>(c.qk_nope_head_dim);
    const int v = static_cast<int>(c.v_head_dim);
    const int64_t entry = lat + rope;
    const int64_t qk = c.qk_head_dim();
    const uint8_t* xq = ws.xq.as<uint8_t>();  // [T, hidden] input_layernorm(h), quantized
    const float* xs = ws.xs.as<float>();

    // Decode-sized steps: the latent KV path on the side stream beside the query path (both only read ws.xq; the
    // q_a-normed queries go to ws.aux_xq so that nothing overwrites ws.xq before the join).
    const bool side = use_side_stream(t_count);
    if (side) {
        m_side->fork(m_stream);
        store_latents(layer, t_count, b, m_side->fp8(), m_side->stream());
    } else {
        store_latents(layer, t_count, b, *m_fp8, m_stream);
    }
    // Queries: q_a -> q_a_layernorm + quant -> q_b (or q_proj straight from the input).
    const uint8_t* q_in = xq;
    const float* q_in_scale = xs;
    if (c.q_lora_rank > 0) {
        linear(xq, xs, t_count, w.q_a, ws.qa.as<uint16_t>(), c.q_lora_rank);
        cuda_model::norm_quantize_into(ws, ws.qa.as<uint16_t>(), nullptr, w.q_a_norm.as<uint16_t>(), t_count,
                                       c.q_lora_rank, kLoraNormEps, m_stream, ws.aux_xq.as<uint8_t>(),
                                       ws.aux_xs.as<float>());
        q_in = ws.aux_xq.as<uint8_t>();
        q_in_scale = ws.aux_xs.as<float>();
    }
    linear(q_in, q_in_scale, t_count, w.q_b, ws.q.as<uint16_t>(), heads * qk);
    if (side) {
        m_side->join(m_stream);  // the cache holds this step's latents before anything attends to it
    }
    const cuda::LatentCacheRef cache = cache_ref(layer);

    if (b.mla_prefill) {  // long prefill chunks: kv_b-expanded flash attention straight into ws.o
        cuda_model::run_mla_prefill_attention(*m_bf16, ws, b, w, c, cache, m_inv_freq.as<float>(), m_rope_scale,
                                              m_softmax_scale, m_stream);
    } else {
        // Absorbed query: [W_UK_h^T q_nope | rope(q_pe)] per head.
        cuda::QueryRopeParams qr;
        qr.q = ws.q.as<uint16_t>();
        qr.q_abs = ws.q_abs.as<uint16_t>();
        qr.positions = b.positions.as<int32_t>();
        qr.inv_freq = m_inv_freq.as<float>();
        qr.rope_scale = m_rope_scale;
        qr.num_tokens = t_count;
        qr.heads = heads;
        qr.nope = nope;
        qr.rope = rope;
        qr.lat = lat;
        cuda::launch_query_rope(qr, m_stream);
        cuda::Bf16GemmParams uk;
        uk.a = ws.q.as<uint16_t>();
        uk.b = w.w_uk.as<uint16_t>();
        uk.c = ws.q_abs.data();
        uk.b_is_nk = false;
        uk.m = t_count;
        uk.n = lat;
        uk.k = nope;
        uk.lda = heads * qk;
        uk.ldb = lat;
        uk.ldc = heads * entry;
        uk.batch = heads;
        uk.a_batch_stride = qk;
        uk.b_batch_stride = static_cast<int64_t>(nope) * lat;
        uk.c_batch_stride = entry;
        m_bf16->run(uk, m_stream);

        attend(layer, t_count, b);

        // o_h = W_UV_h o_lat_h, then o_proj over the concatenated heads.
        cuda::Bf16GemmParams uv;
        uv.a = ws.o_lat.as<uint16_t>();
        uv.b = w.w_uv.as<uint16_t>();
        uv.c = ws.o.data();
        uv.b_is_nk = true;
        uv.m = t_count;
        uv.n = v;
        uv.k = lat;
        uv.lda = static_cast<int64_t>(heads) * lat;
        uv.ldb = lat;
        uv.ldc = static_cast<int64_t>(heads) * v;
        uv.batch = heads;
        uv.a_batch_stride = lat;
        uv.b_batch_stride = static_cast<int64_t>(v) * lat;
        uv.c_batch_stride = v;
        m_bf16->run(uv, m_stream);
    }
    cuda_model::quantize_into(ws, ws.o.as<uint16_t>(), t_count, static_cast<int64_t>(heads) * v, m_stream);
    linear(ws.xq.as<uint8_t>(), ws.xs.as<float>(), t_count, w.o_proj, ws.y.as<uint16_t>(), c.hidden_size);
}

void DeepseekV3CudaModel::store_latents(int layer, int64_t t_count, const cuda_model::StepBatch& b,
                                        cuda::Fp8GemmRunner& fp8, cudaStream_t stream) {
    const ModelConfig& c = m_config;
    const cuda_model::DeviceLayer& w = m_weights.layers[static_cast<size_t>(layer)];
    cuda_model::Workspace& ws = *m_ws;
    const int64_t entry = c.kv_lora_rank + c.qk_rope_head_dim;
    linear(ws.xq.as<uint8_t>(), ws.xs.as<float>(), t_count, w.kv_a, ws.kv.as<uint16_t>(), entry, fp8, stream);
    cuda::LatentStoreParams st;
    st.kv = ws.kv.as<uint16_t>();  // [T, kv_lora_rank + rope]
    st.norm_weight = w.kv_a_norm.as<uint16_t>();
    st.positions = b.positions.as<int32_t>();
    st.slot_mapping = b.slot_mapping.as<int64_t>();
    st.inv_freq = m_inv_freq.as<float>();
    st.rope_scale = m_rope_scale;
    st.eps = kLoraNormEps;
    st.cache = cache_ref(layer);
    st.num_tokens = t_count;
    st.kv_stride = entry;
    st.lat = static_cast<int>(c.kv_lora_rank);
    st.rope = static_cast<int>(c.qk_rope_head_dim);
    cuda::launch_latent_store(st, stream);
}

// NOTE: prefill chunks stay on one stream: their GEMMs fill the GPU on their own (a 3-layer 8k prefill measured
// 2.5-3% slower with the side stream in session 7, likely the persistent MoE prefill kernel, one CTA per SM, waiting
// for SMs the other stream holds).
bool DeepseekV3CudaModel::use_side_stream(int64_t t_count) const {
    return m_side != nullptr && t_count <= kGroupedDecodeMaxTokens;
}

cuda::LatentCacheRef DeepseekV3CudaModel::cache_ref(int layer) const {
    const int64_t entry = m_config.kv_lora_rank + m_config.qk_rope_head_dim;
    const bool fp8 = m_options.kv_cache_dtype == KvCacheDType::FP8_E4M3;
    cuda::LatentCacheRef ref;
    ref.fp8 = fp8;
    ref.num_slots = static_cast<int64_t>(m_num_blocks) * (m_dcp != nullptr ? m_dcp->block_tokens() : kKvBlockSize);
    ref.data =
        m_cache.as<char>() + static_cast<size_t>(layer) * static_cast<size_t>(ref.num_slots * entry) * (fp8 ? 1 : 2);
    return ref;
}

// o_lat [T, heads, kv_lora_rank] from the absorbed queries: the FlashMLA-style split-KV kernel for Kimi-K2 decode
// batches (BF16 or FP8 cache), the general kernel for everything else (prefill chunks, other shapes).
void DeepseekV3CudaModel::attend(int layer, int64_t t_count, const cuda_model::StepBatch& b) {
    const ModelConfig& c = m_config;
    cuda_model::Workspace& ws = *m_ws;
    const cuda::LatentCacheRef cache = cache_ref(layer);
    if (m_dcp != nullptr) {
        cuda_model::DcpAttention::Args da;
        da.q_abs = ws.q_abs.as<uint16_t>();
        da.cache = cache;
        da.out = ws.o_lat.as<uint16_t>();
        da.num_tokens = t_count;
        da.heads = static_cast<int>(c.num_attention_heads);
        da.lat = static_cast<int>(c.kv_lora_rank);
        da.rope = static_cast<int>(c.qk_rope_head_dim);
        da.softmax_scale = m_softmax_scale;
        m_dcp->attend(da, m_stream);
        return;
    }
    if (b.fast_decode) {
        cuda::MlaDecodeParams md;
        md.q = ws.q_abs.as<uint16_t>();
        if (cache.fp8) {
            md.cache_fp8 = static_cast<const uint8_t*>(cache.data);
            md.kv_scale = cache.kv_scale;
        } else {
            md.cache = static_cast<const uint16_t*>(cache.data);
        }
        md.block_tables = b.block_tables.as<int32_t>();
        md.seq_lens = b.seq_lens.as<int32_t>();
        md.num_seqs = b.num_seqs;
        md.num_heads = static_cast<int>(c.num_attention_heads);
        md.max_blocks_per_seq = b.max_blocks_per_seq;
        md.max_seq_len = b.max_context;
        md.softmax_scale = m_softmax_scale;
        const int splits = cuda::mla_decode_num_splits(md, m_num_sms);
        // Sized once for every batch and context (allocate_graph_buffers): graphs keep these pointers.
        K2_CHECK(static_cast<size_t>(cuda::mla_decode_workspace_floats(md, splits)) * 4 <= ws.mla_split.num_bytes() &&
                     static_cast<size_t>(b.num_seqs * c.num_attention_heads * c.kv_lora_rank) * 4 <=
                         ws.o_lat_f32.num_bytes(),
                 "mla decode: {} sequences outside the preallocated attention workspace", b.num_seqs);
        md.workspace = ws.mla_split.as<float>();
        md.num_splits = splits;
        if (cuda::mla_decode_kernel(md) == cuda::MlaDecodeKernel::Wgmma) {  // its combine writes bf16 itself
            md.out_bf16 = ws.o_lat.as<uint16_t>();
            cuda::launch_mla_decode(md, m_stream);
            return;
        }
        md.out = ws.o_lat_f32.as<float>();
        cuda::launch_mla_decode(md, m_stream);
        cuda::F32ToBf16Params cv;
        cv.x = ws.o_lat_f32.as<float>();
        cv.out = ws.o_lat.as<uint16_t>();
        cv.count = b.num_seqs * c.num_attention_heads * c.kv_lora_rank;
        cuda::launch_f32_to_bf16(cv, m_stream);
        return;
    }
    cuda::MlaAttentionParams at;
    at.q = ws.q_abs.as<uint16_t>();
    at.cache = cache;
    at.block_tables = b.block_tables.as<int32_t>();
    at.token_seq = b.token_seq.as<int32_t>();
    at.positions = b.positions.as<int32_t>();
    at.out = ws.o_lat.as<uint16_t>();
    at.num_tokens = t_count;
    at.heads = static_cast<int>(c.num_attention_heads);
    at.lat = static_cast<int>(c.kv_lora_rank);
    at.rope = static_cast<int>(c.qk_rope_head_dim);
    at.block_size = kKvBlockSize;
    at.max_blocks_per_seq = b.max_blocks_per_seq;
    at.max_context = b.max_context;
    at.softmax_scale = m_softmax_scale;
    cuda::launch_mla_attention(at, m_stream);
}

void DeepseekV3CudaModel::dense_mlp(const cuda_model::DeviceLinear& gate_up, const cuda_model::DeviceLinear& down,
                                    int64_t t_count, uint16_t* out, uint8_t* act_q, float* act_s,
                                    cuda::Fp8GemmRunner& fp8, cudaStream_t stream) {
    cuda_model::Workspace& ws = *m_ws;
    const int64_t inter = gate_up.n / 2;
    linear(ws.xq.as<uint8_t>(), ws.xs.as<float>(), t_count, gate_up, ws.gate_up.as<uint16_t>(), gate_up.n, fp8, stream);
    cuda_model::silu_mul_quantize(ws.gate_up.as<uint16_t>(), gate_up.n, t_count, inter, act_q, act_s,
                                  cuda::round_up_16(t_count), stream);
    linear(act_q, act_s, t_count, down, out, down.n, fp8, stream);
}

// Routed experts + shared experts of the normed input ws.xb (bf16) / ws.xq (its quantization) into ws.y.
void DeepseekV3CudaModel::moe(int layer, int64_t t_count) {
    if (m_ep != nullptr) {
        moe_over_dp(layer, t_count);
        return;
    }
    const cuda_model::DeviceLayer& w = m_weights.layers[static_cast<size_t>(layer)];
    cuda_model::Workspace& ws = *m_ws;
    // Decode-sized steps: the shared expert (a bandwidth-bound ~44 MB of Kimi-K2 weights) on the side stream beside
    // the router, permute and gather (latency-bound) and the routed GEMMs; its activation goes to ws.aux_xq, not
    // ws.xq, which the gather reads. ws.gate_up is the dense MLP's buffer, unused by the routed path.
    const bool has_shared = w.gate_up.n > 0;
    const bool side = has_shared && use_side_stream(t_count);
    if (has_shared) {
        uint8_t* act_q = ws.aux_xq.as<uint8_t>();
        float* act_s = ws.aux_xs.as<float>();
        if (side) {
            m_side->fork(m_stream);
            dense_mlp(w.gate_up, w.down, t_count, ws.shared.as<uint16_t>(), act_q, act_s, m_side->fp8(),
                      m_side->stream());
        } else {
            dense_mlp(w.gate_up, w.down, t_count, ws.shared.as<uint16_t>(), act_q, act_s, *m_fp8, m_stream);
        }
    }
    routed_experts(layer, t_count);
    if (side) {
        m_side->join(m_stream);
    }
    cuda::MoeCombineParams cp;
    cp.y = ws.yg.as<uint16_t>();
    cp.pair_row = ws.pair_row.as<int32_t>();
    cp.topk_weights = ws.topk_weights.as<float>();
    cp.shared = has_shared ? ws.shared.as<uint16_t>() : nullptr;
    cp.out = ws.y.as<uint16_t>();
    cp.num_tokens = t_count;
    cp.hidden = m_config.hidden_size;
    cp.top_k = static_cast<int>(m_config.num_experts_per_tok);
    cuda::launch_moe_combine(cp, m_stream);
}

void DeepseekV3CudaModel::routed_experts(int layer, int64_t t_count, int64_t ep_slice_rows) {
    const ModelConfig& c = m_config;
    const cuda_model::DeviceLayer& w = m_weights.layers[static_cast<size_t>(layer)];
    cuda_model::Workspace& ws = *m_ws;
    const int experts = static_cast<int>(c.n_routed_experts);  // the router's: all of them
    const int local = w.experts.num_experts;                   // this rank's (expert parallelism: a range)
    const int top_k = static_cast<int>(c.num_experts_per_tok);
    const int64_t hidden = c.hidden_size;
    const int64_t rows = t_count * top_k;  // P

    cuda::Bf16GemmParams rg;  // router logits [T, experts] f32 (vLLM runs the gate in the activation dtype)
    rg.a = ws.xb.as<uint16_t>();
    rg.b = w.router.as<uint16_t>();
    rg.c = ws.router_logits.data();
    rg.c_f32 = true;
    rg.m = t_count;
    rg.n = experts;
    rg.k = hidden;
    rg.lda = hidden;
    rg.ldb = hidden;
    rg.ldc = experts;
    m_bf16->run(rg, m_stream);
    cuda::MoeRouterParams rp;
    rp.logits = ws.router_logits.as<float>();
    rp.bias = w.router_bias.as<float>();
    rp.topk_ids = ws.topk_ids.as<int32_t>();
    rp.topk_weights = ws.topk_weights.as<float>();
    rp.num_tokens = t_count;
    rp.num_experts = experts;
    rp.n_group = static_cast<int>(c.n_group);
    rp.topk_group = static_cast<int>(c.topk_group);
    rp.top_k = top_k;
    rp.norm_topk_prob = c.norm_topk_prob;
    rp.routed_scaling_factor = static_cast<float>(c.routed_scaling_factor);
    cuda::launch_moe_router(rp, m_stream);
    if (ep_slice_rows > 0) {
        drop_padding_rows(ep_slice_rows);
    }

    cuda::MoePermuteParams pp;
    pp.topk_ids = ws.topk_ids.as<int32_t>();
    pp.offsets = ws.offsets.as<int32_t>();
    pp.row_token = ws.row_token.as<int32_t>();
    pp.pair_row = ws.pair_row.as<int32_t>();
    pp.num_tokens = t_count;
    pp.top_k = top_k;
    pp.num_experts = local;
    pp.expert_begin = w.experts.first_expert;  // pairs of other ranks' experts get no row
    cuda::launch_moe_permute(pp, m_stream);
    cuda::MoeGatherParams gp;
    gp.x = ws.xq.as<uint8_t>();
    gp.x_scale = ws.xs.as<float>();
    gp.row_token = ws.row_token.as<int32_t>();
    gp.offsets = ws.offsets.as<int32_t>();
    gp.out = ws.xg.as<uint8_t>();
    gp.out_scale = ws.xgs.as<float>();
    gp.num_rows = rows;
    gp.k = hidden;
    gp.x_scale_stride = cuda::round_up_16(t_count);
    gp.num_experts = local;
    cuda::launch_moe_gather(gp, m_stream);

    // A DP graph step's gathered rows (up to ep x 64 / tp) take the grouped launch too: nothing may sync during
    // capture.
    const bool grouped_launch = t_count <= kGroupedDecodeMaxTokens || (ep_slice_rows > 0 && m_dp_graph_size > 0);
    auto grouped_params = [&](const cuda_model::DeviceLinear& lin, const uint8_t* x, const float* x_scale,
                              uint16_t* y) {
        cuda::Fp8GroupedGemmParams g;
        g.x = x;
        g.x_scale = x_scale;
        g.w = lin.weight.as<uint8_t>();
        g.w_scale = lin.scale.as<float>();
        g.y = y;
        g.offsets = ws.offsets.as<int32_t>();
        g.num_experts = local;
        g.n = lin.n;
        g.k = lin.k;
        g.max_rows_per_expert = t_count;
        g.max_touched_experts = std::min<int64_t>(local, rows);
        return g;
    };
    // Prefill: one wgmma launch that reads the offsets on the device (no host copy, no sync per layer) wherever it
    // takes both GEMMs' shapes; else the per-expert cuBLASLt forms, which need the offsets on the host.
    const bool prefill_wgmma =
        !grouped_launch && prefill_wgmma_enabled() &&
        cuda::moe_prefill_gemm_supported(
            grouped_params(w.experts.gate_up, ws.xg.as<uint8_t>(), ws.xgs.as<float>(), ws.gug.as<uint16_t>())) &&
        cuda::moe_prefill_gemm_supported(
            grouped_params(w.experts.down, ws.actg.as<uint8_t>(), ws.acts_blocked.as<float>(), ws.yg.as<uint16_t>()));
    if (!grouped_launch && !prefill_wgmma) {
        ws.host_offsets.resize(static_cast<size_t>(local + 1));
        CUDA_CHECK(cudaMemcpyAsync(ws.host_offsets.data(), ws.offsets.data(), ws.host_offsets.size() * 4,
                                   cudaMemcpyDeviceToHost, m_stream));
        CUDA_CHECK(cudaStreamSynchronize(m_stream));
    }
    auto grouped = [&](const cuda_model::DeviceLinear& lin, const uint8_t* x, const float* x_scale, uint16_t* y) {
        const cuda::Fp8GroupedGemmParams g = grouped_params(lin, x, x_scale, y);
        if (grouped_launch) {
            cuda::launch_fp8_grouped_gemm_decode(g, m_stream);
        } else if (prefill_wgmma) {
            cuda::launch_fp8_grouped_gemm_prefill_wgmma(g, m_stream, cuda::moe_prefill_gemm_options(rows, experts));
        } else if (m_moe_lanes != nullptr) {
            m_moe_lanes->run(g, ws.host_offsets.data(), m_stream);
        } else {
            cuda::run_fp8_grouped_gemm_prefill(*m_fp8, g, ws.host_offsets.data(), m_stream,
                                               ws.padded_scales.as<float>());
        }
    };
    const int64_t mi = c.moe_intermediate_size;
    grouped(w.experts.gate_up, ws.xg.as<uint8_t>(), ws.xgs.as<float>(), ws.gug.as<uint16_t>());
    cuda_model::silu_mul_quantize(ws.gug.as<uint16_t>(), 2 * mi, rows, mi, ws.actg.as<uint8_t>(), ws.acts.as<float>(),
                                  rows, m_stream);
    cuda::MoeScaleLayoutParams sl;
    sl.scale = ws.acts.as<float>();
    sl.offsets = ws.offsets.as<int32_t>();
    sl.out = ws.acts_blocked.as<float>();
    sl.num_rows = rows;
    sl.num_groups = mi / 128;
    sl.num_experts = local;
    cuda::launch_moe_scales_to_expert_blocked(sl, m_stream);
    grouped(w.experts.down, ws.actg.as<uint8_t>(), ws.acts_blocked.as<float>(), ws.yg.as<uint16_t>());
}

}  // namespace k2

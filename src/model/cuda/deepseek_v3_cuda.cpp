// DeepseekV3CudaModel: one step = upload the batch's index arrays, embed, then per layer
//   rms_norm_quant -> q_a/kv_a FP8 GEMMs -> q_a_norm+quant -> q_b -> latent store (norm+rope+paged write) ->
//   query rope + W_UK absorb (bf16 batched GEMM) -> MLA attention -> W_UV -> quant -> o_proj,
//   rms_norm(+residual) -> dense SwiGLU, or router -> permute -> grouped FP8 experts -> combine (+ shared expert),
// and the final norm + BF16 lm_head only on the rows whose logits are wanted.
#include "model/cuda/deepseek_v3_cuda.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "backend/cpu/rope.h"
#include "backend/cuda/fp8_quant.h"
#include "backend/cuda/mla_decode.h"
#include "backend/cuda/model_ops.h"
#include "core/log.h"
#include "model/cuda/cuda_workspace.h"

namespace k2 {

namespace {

using cuda_model::StepBatch;

// At most this many tokens take the fast decode attention (its f32 output buffer is sized for it).
constexpr int64_t kFastDecodeMaxSeqs = 512;
template <typename T>
void upload_async(cuda::DeviceBuffer& buf, const std::vector<T>& host, cudaStream_t stream) {
    cuda_model::ensure(buf, std::max<size_t>(host.size() * sizeof(T), 16));
    if (!host.empty()) {
        CUDA_CHECK(cudaMemcpyAsync(buf.data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, stream));
    }
}

// table [rows, hidden] bf16 -> [rows + 1, hidden] with a zero last row (the vocabulary-parallel embedding's
// stand-in for token ids another rank holds).
Tensor with_zero_row(const Tensor& table) {
    K2_CHECK(table.dtype() == DType::BF16, "CUDA model: the embedding must be BF16, not {}", dtype_name(table.dtype()));
    Tensor out = Tensor::zeros(DType::BF16, {table.dim(0) + 1, table.dim(1)});
    std::memcpy(out.data_as<uint8_t>(), table.data_as<uint8_t>(), table.nbytes());
    return out;
}

// Every TP slice must fall on the 128x128 FP8 weight blocks (true for Kimi-K2 up to tp 16); checked before any
// weight is read, naming the config field.
void check_tp_blocks(const ModelConfig& f, int tp) {
    const auto check_blocks = [&](int64_t value, const char* field) {
        K2_CHECK(value % tp == 0 && (value / tp) % 128 == 0,
                 "--device cuda with --tensor-parallel-size {}: config.json {} = {} must split into multiples of 128 "
                 "(the FP8 weight blocks)",
                 tp, field, value);
    };
    check_blocks(f.intermediate_size, "intermediate_size");
    bool has_moe = false;
    for (int l = 0; l < f.num_hidden_layers; ++l) {
        has_moe = has_moe || f.is_moe_layer(l);
    }
    if (has_moe) {  // the routed experts' slices (without expert parallelism) and the shared experts'
        check_blocks(f.moe_intermediate_size, "moe_intermediate_size");
    }
    check_blocks(f.num_attention_heads * f.qk_head_dim(), "num_attention_heads x qk_head_dim");
    check_blocks(f.num_attention_heads * f.v_head_dim, "num_attention_heads x v_head_dim");
}

}  // namespace

// Tensor parallelism (vLLM's -tp) on GPUs: each rank holds a slice of the heads, of the dense/shared/expert
// intermediate dimension and of the vocabulary (deepseek_v3_shard.h), on GPU rank % device_count, and the
// sublayer outputs are summed by an all-reduce. Shards must fall on the 128x128 FP8 blocks (true for Kimi-K2 and
// DeepSeek-V3 up to tp 16). Data parallelism runs one replica per TP group; with expert parallelism the replicas
// share their experts through moe_over_dp. PP on GPUs is not implemented yet.
void DeepseekV3CudaModel::setup_tensor_parallel(const ModelOptions& options) {
    if (options.parallel == nullptr || options.parallel->config.is_single()) {
        return;
    }
    const dist::ParallelConfig& p = options.parallel->config;
    K2_CHECK(p.pipeline_parallel_size == 1,
             "--device cuda: pipeline parallelism does not run on GPUs yet (got pp {}); -tp, -dp, "
             "--enable-expert-parallel and -dcp do",
             p.pipeline_parallel_size);
    const int tp = p.tensor_parallel_size;
    const ModelConfig& f = m_full_config;
    if (tp > 1) {
        check_tp_blocks(f, tp);
    }
    const int device = options.parallel->rank % cuda::cuda_device_count();
    CUDA_CHECK(cudaSetDevice(device));
    const char* kind = std::getenv("K2_TP_COMM");
    const std::string comm_kind = kind != nullptr ? kind : "auto";
    if (tp > 1) {
        m_tp = cuda_model::make_tp_comm(comm_kind, options.parallel->tp, device);
        if (!m_tp->graph_capturable()) {
            m_options.enforce_eager = true;
        }
    }
    const ShardLayout layout = make_shard_layout(f, options.parallel.get());
    m_config.num_attention_heads = layout.num_heads;
    m_config.intermediate_size = f.intermediate_size / tp;
    // Expert parallelism (vLLM's EP over the TP group when dp = 1): each rank holds whole experts, so the routed
    // experts keep the full intermediate size; the shared experts stay split like a dense MLP (their DeviceLinear
    // shapes come from the sliced weights). Each rank's partial MoE output joins the same all-reduce.
    m_config.moe_intermediate_size = layout.expert_parallel ? f.moe_intermediate_size : f.moe_intermediate_size / tp;
    if (layout.expert_parallel && p.data_parallel_size > 1) {
        m_ep = cuda_model::make_tp_comm(comm_kind == "host" ? "host" : "nccl", options.parallel->ep, device);
        m_tp_rank = layout.tp_rank;
        m_tp_size = tp;
        m_dp_rank = options.parallel->coord.dp;
        m_dp_size = p.data_parallel_size;
        m_dp_max_tokens = std::max(options.max_num_tokens, 1);
        // Decode steps replay graphs at a size common to all replicas (deepseek_v3_cuda_dp.cpp); host-staged
        // exchanges cannot be captured.
        if (!m_ep->graph_capturable()) {
            m_options.enforce_eager = true;
        }
    }
    if (layout.dcp_size > 1) {
        int sms = 0;
        CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
        m_dcp = std::make_unique<cuda_model::DcpAttention>(
            cuda_model::make_tp_comm(comm_kind == "host" ? "host" : "nccl", options.parallel->dcp, device),
            layout.dcp_rank, sms);
        // The per-step host arrays of DCP (local slots, last local keys) are uploaded into eager buffers.
        m_options.enforce_eager = true;
    }
    m_vocab_begin = layout.vocab_begin;
    m_vocab_local = layout.vocab_size;
    m_logits_rank = options.parallel->is_dp_leader();
    K2_INFO("CUDA model: DP rank {}/{}, tensor-parallel rank {}/{} on GPU {} ({} heads, vocabulary rows {}..{}{}{})",
            options.parallel->coord.dp, p.data_parallel_size, layout.tp_rank, tp, device, layout.num_heads,
            m_vocab_begin, m_vocab_begin + m_vocab_local,
            m_tp != nullptr ? fmt::format(", {} all-reduce", m_tp->name()) : std::string(),
            layout.expert_parallel
                ? fmt::format(", routed experts {}..{} whole{}", layout.expert_begin,
                              layout.expert_begin + layout.num_experts,
                              m_ep != nullptr ? fmt::format(" (exchange over {} ranks, {})", m_ep->size(), m_ep->name())
                                              : std::string())
                : std::string());
    if (m_dcp != nullptr) {
        K2_INFO("CUDA model: decode context parallel rank {}/{}: {} of every 64 KV tokens here (CUDA graphs off)",
                layout.dcp_rank, layout.dcp_size, m_dcp->block_tokens());
    }
}

void DeepseekV3CudaModel::tp_all_reduce(uint16_t* buf, int64_t count) {
    if (m_tp != nullptr && count > 0) {
        m_tp->all_reduce_bf16(buf, count, m_stream);
    }
}

DeepseekV3CudaModel::DeepseekV3CudaModel(ModelConfig config, Checkpoint checkpoint, const ModelOptions& options)
    : m_config(config), m_full_config(std::move(config)), m_options(options) {
    K2_CHECK(cuda::cuda_device_count() > 0, "--device cuda: no CUDA device is visible (use --device cpu)");
    setup_tensor_parallel(options);
    if (m_options.kv_cache_dtype == KvCacheDType::F32) {  // the CPU default ("auto" there): bf16 is auto here
        m_options.kv_cache_dtype = KvCacheDType::BF16;
    }
    const ModelConfig& c = m_config;
    K2_CHECK(c.weight_block_n == 128 && c.weight_block_k == 128,
             "CUDA model: weight_block_size must be [128, 128], got [{}, {}]", c.weight_block_n, c.weight_block_k);
    K2_CHECK(c.hidden_size % 128 == 0 && c.kv_lora_rank % 32 == 0 && c.qk_rope_head_dim <= cuda::kMlaMaxRope &&
                 c.kv_lora_rank <= cuda::kMlaMaxLatent,
             "CUDA model: unsupported shape (hidden {}, kv_lora_rank {}, rope {})", c.hidden_size, c.kv_lora_rank,
             c.qk_rope_head_dim);
    {
        DeepseekV3Weights host = load_deepseek_v3_weights(checkpoint, m_full_config);
        if (options.parallel != nullptr && !options.parallel->config.is_single()) {
            shard_weights(host, m_full_config, make_shard_layout(m_full_config, options.parallel.get()));
            if (m_tp != nullptr) {
                host.embed_tokens = with_zero_row(host.embed_tokens);
            }
        }
        m_weights = cuda_model::upload_weights(host, c);
    }
    CUDA_CHECK(cudaStreamCreateWithFlags(&m_stream, cudaStreamNonBlocking));
    if (cuda_model::SideStream::enabled_from_env()) {
        m_side = std::make_unique<cuda_model::SideStream>();
    }
    int device = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetAttribute(&m_num_sms, cudaDevAttrMultiProcessorCount, device));
    m_fp8 = std::make_unique<cuda::Fp8GemmRunner>();
    m_bf16 = std::make_unique<cuda::Bf16GemmRunner>();
    // With DP + EP the MoE runs on every replica's tokens: ep ranks x a 1/tp slice of up to max_num_tokens each.
    const int64_t step_tokens = std::max(options.max_num_tokens, 1);
    m_ws = std::make_unique<cuda_model::Workspace>(
        c, m_ep != nullptr ? m_ep->size() * ((step_tokens + m_tp_size - 1) / m_tp_size) : step_tokens);
    m_batch = std::make_unique<StepBatch>();
    if (m_ep != nullptr) {  // once, at their largest: CUDA graphs keep the pointers
        m_ep_counts = cuda::DeviceBuffer(static_cast<size_t>(2 * m_dp_size) * 4);
        m_ep_rows_pair = cuda::DeviceBuffer(static_cast<size_t>(std::max<int64_t>(step_tokens, 4)) * 4);
        m_ep_rows_weight = cuda::DeviceBuffer(static_cast<size_t>(std::max<int64_t>(step_tokens, 4)) * 4);
    }
    if (const int lanes = cuda_model::MoePrefillLanes::lanes_from_env(); lanes > 1 && c.n_routed_experts > 0) {
        m_moe_lanes = std::make_unique<cuda_model::MoePrefillLanes>(lanes, c, m_ws->capacity);
    }
    if (m_tp != nullptr) {  // once, at its largest: CUDA graphs keep the pointer
        m_logits_gathered = cuda::DeviceBuffer(
            static_cast<size_t>(std::min(m_ws->capacity, cuda_model::kLogitsRowsPerPass) * c.vocab_size) * 4);
    }
    const cpu::YarnParams yarn = yarn_params(c.rope_scaling);
    const std::vector<float> inv_freq = cpu::yarn_inv_freq(c.qk_rope_head_dim, c.rope_theta, yarn);
    m_inv_freq = cuda::DeviceBuffer(inv_freq.size() * 4);
    m_inv_freq.upload(inv_freq.data(), inv_freq.size() * 4);
    m_rope_scale = cpu::yarn_cos_sin_scale(yarn);
    m_softmax_scale = static_cast<float>(c.softmax_scale());
    allocate_graph_buffers();
    K2_INFO("CUDA model: {:.2f} GiB of weights on the GPU, activations for {} tokens per step, CUDA graphs {}",
            static_cast<double>(m_weights.num_bytes) / (1ull << 30), m_ws->capacity,
            m_options.enforce_eager ? "off (--enforce-eager)" : "on for decode batches of up to 64 sequences");
}

// Everything a graph points at is allocated here, once, at its largest size: the graph batch's index arrays and
// the fast decode attention's buffers (eager steps use them too, so they must never grow).
void DeepseekV3CudaModel::allocate_graph_buffers() {
    const ModelConfig& c = m_config;
    const int64_t max_len = m_options.max_model_len > 0 ? m_options.max_model_len : c.max_position_embeddings;
    m_graph_blocks = static_cast<int>((std::max<int64_t>(max_len, 1) + kKvBlockSize - 1) / kKvBlockSize);
    constexpr int kMaxGraphSeqs = kGraphBatchSizes[std::size(kGraphBatchSizes) - 1];
    m_graph_batch = std::make_unique<StepBatch>();
    StepBatch& g = *m_graph_batch;
    for (cuda::DeviceBuffer* buf : {&g.token_ids, &g.positions, &g.token_seq, &g.seq_lens, &g.logits_indices}) {
        *buf = cuda::DeviceBuffer(kMaxGraphSeqs * 4);
    }
    g.slot_mapping = cuda::DeviceBuffer(kMaxGraphSeqs * 8);
    g.block_tables = cuda::DeviceBuffer(static_cast<size_t>(kMaxGraphSeqs) * static_cast<size_t>(m_graph_blocks) * 4);
    if (c.kv_lora_rank == cuda::kMlaLatent && c.qk_rope_head_dim == cuda::kMlaRope &&
        (c.num_attention_heads < cuda::kMlaHeadsPerCta || c.num_attention_heads % cuda::kMlaHeadsPerCta == 0)) {
        int64_t floats = 0;
        cuda::MlaDecodeParams md;
        md.num_heads = static_cast<int>(c.num_attention_heads);
        md.max_seq_len = static_cast<int>(std::max<int64_t>(max_len, c.max_position_embeddings));
        for (int64_t seqs = 1; seqs <= kFastDecodeMaxSeqs; ++seqs) {
            md.num_seqs = seqs;
            floats =
                std::max(floats, cuda::mla_decode_workspace_floats(md, cuda::mla_decode_num_splits(md, m_num_sms)));
        }
        m_ws->mla_split = cuda::DeviceBuffer(static_cast<size_t>(floats) * 4);
        m_ws->o_lat_f32 =
            cuda::DeviceBuffer(static_cast<size_t>(kFastDecodeMaxSeqs * c.num_attention_heads * c.kv_lora_rank) * 4);
    }
}

DeepseekV3CudaModel::~DeepseekV3CudaModel() {
    for (const auto& [size, exec] : m_graphs) {
        cudaGraphExecDestroy(exec);
    }
    for (cudaEvent_t e : m_layer_events) {
        cudaEventDestroy(e);
    }
    for (cudaEvent_t e : m_comm_events) {
        cudaEventDestroy(e);
    }
    for (cudaEvent_t e : m_ep_events) {
        cudaEventDestroy(e);
    }
    if (m_stream != nullptr) {
        cudaStreamSynchronize(m_stream);
    }
    // The communicators were last given m_stream: they go first (their teardown may wait on their stream).
    m_dcp.reset();
    m_ep.reset();
    m_tp.reset();
    if (m_stream != nullptr) {
        cudaStreamDestroy(m_stream);
    }
}

size_t DeepseekV3CudaModel::kv_cache_bytes_per_block() const {
    const size_t elem = m_options.kv_cache_dtype == KvCacheDType::FP8_E4M3 ? 1 : 2;
    const size_t block_tokens = m_dcp != nullptr ? m_dcp->block_tokens() : kKvBlockSize;
    return static_cast<size_t>(m_config.num_hidden_layers) * block_tokens *
           static_cast<size_t>(m_config.kv_lora_rank + m_config.qk_rope_head_dim) * elem;
}

void DeepseekV3CudaModel::allocate_kv_cache(int num_blocks) {
    K2_CHECK(num_blocks > 0, "CUDA model: the KV cache needs at least one block, got {}", num_blocks);
    CUDA_CHECK(cudaStreamSynchronize(m_stream));
    for (const auto& [size, exec] : m_graphs) {  // they point at the old cache
        CUDA_CHECK(cudaGraphExecDestroy(exec));
    }
    m_graphs.clear();
    m_cache = cuda::DeviceBuffer();
    m_cache = cuda::DeviceBuffer(kv_cache_bytes_per_block() * static_cast<size_t>(num_blocks));
    m_num_blocks = num_blocks;
}

size_t DeepseekV3CudaModel::kv_cache_budget_bytes(double gpu_memory_utilization) const {
    size_t free_bytes = 0;
    size_t total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    const double allowed = gpu_memory_utilization * static_cast<double>(total_bytes);
    // A cache allocated earlier is replaced by the next one: its bytes count as free (asked again, e.g. for the
    // next DP replica, the answer stays the same).
    const double used = static_cast<double>(total_bytes - free_bytes) - static_cast<double>(m_cache.num_bytes());
    // At least 1: 0 would read as "this model has no device budget" (Model::kv_cache_budget_bytes).
    return allowed > used + 1.0 ? static_cast<size_t>(allowed - used) : 1;
}

void DeepseekV3CudaModel::upload_batch(const ForwardBatch& b, StepBatch& d, int table_pitch) {
    d.host_token_seq.resize(b.token_ids.size());
    for (int s = 0; s < b.num_seqs(); ++s) {
        std::fill(d.host_token_seq.begin() + b.query_start[s], d.host_token_seq.begin() + b.query_start[s + 1], s);
    }
    d.num_tokens = b.num_tokens();
    d.num_seqs = b.num_seqs();
    d.max_blocks_per_seq = table_pitch > 0 ? table_pitch : b.max_blocks_per_seq;
    d.max_context = 0;
    for (const int32_t len : b.seq_lens) {
        d.max_context = std::max(d.max_context, len);
    }
    d.fast_decode = use_fast_decode(b);
    if (m_tp != nullptr) {  // ids of other ranks' vocabulary rows read the zero row m_vocab_local
        m_local_ids.resize(b.token_ids.size());
        for (size_t i = 0; i < b.token_ids.size(); ++i) {
            const int64_t local = b.token_ids[i] - m_vocab_begin;
            m_local_ids[i] = static_cast<int32_t>(local >= 0 && local < m_vocab_local ? local : m_vocab_local);
        }
        upload_async(d.token_ids, m_local_ids, m_stream);
    } else {
        upload_async(d.token_ids, b.token_ids, m_stream);
    }
    upload_async(d.positions, b.positions, m_stream);
    if (m_dcp != nullptr) {  // eager only (setup_tensor_parallel): this rank's share of the cache
        m_dcp->local_slots(b, m_local_slots);
        upload_async(d.slot_mapping, m_local_slots, m_stream);
        m_dcp->prepare_step(b, static_cast<int>(m_config.num_attention_heads), m_stream);
    } else {
        upload_async(d.slot_mapping, b.slot_mapping, m_stream);
    }
    upload_async(d.token_seq, d.host_token_seq, m_stream);
    upload_async(d.seq_lens, b.seq_lens, m_stream);
    if (table_pitch > 0 && b.max_blocks_per_seq > 0) {  // into the fixed [seqs, table_pitch] table of the graphs
        const size_t row = static_cast<size_t>(b.max_blocks_per_seq) * 4;
        CUDA_CHECK(cudaMemcpy2DAsync(d.block_tables.data(), static_cast<size_t>(table_pitch) * 4, b.block_tables.data(),
                                     row, row, static_cast<size_t>(b.num_seqs()), cudaMemcpyHostToDevice, m_stream));
    } else if (table_pitch == 0) {
        upload_async(d.block_tables, b.block_tables, m_stream);
    }
    upload_async(d.logits_indices, b.logits_indices, m_stream);
    if (m_ep != nullptr) {  // eager only: where moe_over_dp puts this rank's slice of the tokens back
        const int64_t t_count = b.num_tokens();
        const int64_t begin = t_count * m_tp_rank / m_tp_size;
        const int64_t end = t_count * (m_tp_rank + 1) / m_tp_size;
        std::vector<int32_t> rows(static_cast<size_t>(t_count));  // [T]
        for (int64_t t = 0; t < t_count; ++t) {
            rows[static_cast<size_t>(t)] = t >= begin && t < end ? static_cast<int32_t>(t - begin) : -1;
        }
        upload_async(m_ep_rows_pair, rows, m_stream);
        upload_async(m_ep_rows_weight, std::vector<float>(static_cast<size_t>(t_count), 1.0f), m_stream);
    }
    if (table_pitch == 0 && m_dcp == nullptr) {  // graph batches (and DCP) use the absorbed kernels only
        cuda_model::prepare_mla_prefill(b, m_config, m_ws->ctx_capacity, d, m_stream);
    }
}

void DeepseekV3CudaModel::linear(const uint8_t* xq, const float* xs, int64_t m, const cuda_model::DeviceLinear& w,
                                 uint16_t* y, int64_t y_stride) {
    linear(xq, xs, m, w, y, y_stride, *m_fp8, m_stream);
}

void DeepseekV3CudaModel::linear(const uint8_t* xq, const float* xs, int64_t m, const cuda_model::DeviceLinear& w,
                                 uint16_t* y, int64_t y_stride, cuda::Fp8GemmRunner& fp8, cudaStream_t stream) {
    cuda::Fp8GemmParams p;
    p.x = xq;
    p.x_scale = xs;
    p.w = w.weight.as<uint8_t>();
    p.w_scale = w.scale.as<float>();
    p.y = y;
    p.num_tokens = m;
    p.n = w.n;
    p.k = w.k;
    p.x_stride = w.k;
    p.x_scale_stride = cuda::round_up_16(m);
    p.padded_rows = true;  // every activation buffer has 16 rows of slack (Workspace)
    p.y_stride = y_stride;
    fp8.run(p, stream);
}

bool DeepseekV3CudaModel::use_fast_decode(const ForwardBatch& b) const {
    static const bool disabled = std::getenv("K2_DISABLE_FAST_MLA_DECODE") != nullptr;
    const ModelConfig& c = m_config;
    return !disabled && m_dcp == nullptr && c.kv_lora_rank == cuda::kMlaLatent &&
           c.qk_rope_head_dim == cuda::kMlaRope &&
           (c.num_attention_heads < cuda::kMlaHeadsPerCta || c.num_attention_heads % cuda::kMlaHeadsPerCta == 0) &&
           m_options.kv_cache_dtype != KvCacheDType::F32 && b.num_tokens() == b.num_seqs() &&
           b.num_seqs() <= kFastDecodeMaxSeqs &&
           std::adjacent_find(b.query_start.begin(), b.query_start.end(),
                              [](int32_t a, int32_t next) { return next - a != 1; }) == b.query_start.end();
}

void DeepseekV3CudaModel::check_batch(const ForwardBatch& b) const {
    K2_CHECK(b.num_tokens() <= m_ws->capacity,
             "CUDA model: a step of {} tokens exceeds the {} the activations were sized for (--max-num-batched-tokens)",
             b.num_tokens(), m_ws->capacity);
    K2_CHECK(m_num_blocks > 0 || b.num_tokens() == 0, "forward: the KV cache is not allocated");
    const bool empty = b.num_tokens() == 0 && b.num_seqs() == 0 && b.query_start.empty();  // ForwardBatch{}: a dummy
    K2_CHECK(empty || (b.query_start.size() == static_cast<size_t>(b.num_seqs() + 1) &&
                       b.block_tables.size() ==
                           static_cast<size_t>(b.num_seqs()) * static_cast<size_t>(b.max_blocks_per_seq)),
             "forward batch: query_start/block_tables do not match {} sequences", b.num_seqs());
    for (const int32_t id : b.token_ids) {
        K2_CHECK(id >= 0 && id < m_config.vocab_size, "forward batch: token id {} outside the vocabulary of {}", id,
                 m_config.vocab_size);
    }
    for (const int32_t block : b.block_tables) {
        K2_CHECK(block < m_num_blocks, "forward batch: block id {} outside the {} cache blocks", block, m_num_blocks);
    }
    for (const int64_t slot : b.slot_mapping) {
        K2_CHECK(slot < static_cast<int64_t>(m_num_blocks) * kKvBlockSize, "forward batch: slot {} outside the cache",
                 slot);
    }
    for (const int32_t row : b.logits_indices) {
        K2_CHECK(row >= 0 && row < b.num_tokens(), "forward batch: logits index {} outside the {} tokens", row,
                 b.num_tokens());
    }
}

Tensor DeepseekV3CudaModel::forward(const ForwardBatch& batch) {
    submit(batch);
    return collect();
}

// Enqueues the whole step, logits download included, on m_stream and returns without waiting for it: the engine
// (--async-scheduling) builds the next step meanwhile. The uploads copy from pageable host memory, which CUDA stages
// before cudaMemcpyAsync returns, so the caller may reuse `batch` at once.
void DeepseekV3CudaModel::submit(const ForwardBatch& batch) {
    K2_CHECK(!m_pending.has_value(), "CUDA model: submit called twice without collect");
    check_batch(batch);
    const auto num_rows = static_cast<int64_t>(batch.logits_indices.size());
    if (m_ep != nullptr) {
        K2_CHECK(batch.dp_num_tokens.size() == static_cast<size_t>(m_dp_size) &&
                     batch.dp_num_tokens[static_cast<size_t>(m_dp_rank)] == batch.num_tokens() &&
                     batch.dp_padded_tokens() <= m_dp_max_tokens,
                 "forward batch: dp_num_tokens [{}] must hold the {} replicas' token counts (this one, {}, has {}), "
                 "each within --max-num-batched-tokens {} (data + expert parallelism exchanges every replica's tokens)",
                 fmt::join(batch.dp_num_tokens, ", "), m_dp_size, m_dp_rank, batch.num_tokens(), m_dp_max_tokens);
        m_dp_tokens = batch.dp_num_tokens;
        plan_dp_step(batch);
    }
    if (batch.num_tokens() == 0) {
        if (m_ep != nullptr) {
            dp_idle_step(batch);
        }
        m_pending = Tensor::zeros(DType::F32, {num_rows, m_config.vocab_size});
        return;
    }
    K2_CHECK(batch.device_sampling.empty() ||
                 (samples_on_device() && batch.device_sampling.size() == static_cast<size_t>(num_rows)),
             "forward batch: device_sampling has {} rows for {} logits rows (or this model samples on the host)",
             batch.device_sampling.size(), num_rows);
    m_sampler.begin_step(batch.device_sampling, m_stream);
    Tensor logits = host_logits(num_rows);  // [rows, vocab]
    if (const int graph_size = graph_size_for(batch); graph_size > 0) {
        run_graph(batch, graph_size);
        finish_logits(0, num_rows, logits);
    } else {
        upload_batch(batch, *m_batch);
        run_layers(*m_batch);
        // Passes reuse ws.logits: stream order puts each pass's download before the next pass's lm_head.
        for (int64_t r0 = 0; r0 < num_rows; r0 += cuda_model::kLogitsRowsPerPass) {
            const int64_t n = std::min(cuda_model::kLogitsRowsPerPass, num_rows - r0);
            logits_pass(*m_batch, r0, n);
            finish_logits(r0, n, logits);
        }
    }
    m_pending = m_logits_rank ? std::move(logits) : Tensor::zeros(DType::F32, {0, m_config.vocab_size});
}

// Waits for the step submit enqueued; its logits are then on the host.
Tensor DeepseekV3CudaModel::collect() {
    K2_CHECK(m_pending.has_value(), "CUDA model: collect called without submit");
    Tensor logits = std::move(*m_pending);  // [rows, vocab]
    m_pending.reset();
    CUDA_CHECK(cudaStreamSynchronize(m_stream));
    m_sampled = m_sampler.finish_step();
    return logits;
}

bool DeepseekV3CudaModel::samples_on_device() const {
    static const bool host_only = std::getenv("K2_HOST_SAMPLING") != nullptr;
    return (m_options.parallel == nullptr || m_options.parallel->config.is_single()) && !host_only;
}

// Rows [r0, r0 + n) of ws.logits: the device-sampled ones are sampled there (only their tokens travel), the logits
// go to the host when any row needs them.
void DeepseekV3CudaModel::finish_logits(int64_t r0, int64_t n, Tensor& logits) {
    if (m_sampler.active()) {
        m_sampler.sample(m_ws->logits.as<float>(), r0, n, m_config.vocab_size, m_stream);
    }
    if (m_sampler.any_host(r0, n)) {
        download_logits(r0, n, logits);
    }
}

void DeepseekV3CudaModel::run_layers(const StepBatch& b) {
    const ModelConfig& c = m_config;
    cuda_model::Workspace& ws = *m_ws;
    const int64_t t_count = b.num_tokens;
    const int64_t hidden = c.hidden_size;
    cuda::EmbeddingParams ep;
    ep.token_ids = b.token_ids.as<int32_t>();
    ep.table = m_weights.embed.as<uint16_t>();
    ep.out = ws.h.as<uint16_t>();
    ep.num_tokens = t_count;
    ep.hidden = hidden;
    ep.vocab = m_tp != nullptr ? m_vocab_local + 1 : c.vocab_size;
    cuda::launch_embedding(ep, m_stream);
    tp_all_reduce(ws.h.as<uint16_t>(), t_count * hidden);
    const auto eps = static_cast<float>(c.rms_norm_eps);
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(m_stream, &capture));
    const bool profile = m_profile_layers && capture == cudaStreamCaptureStatusNone;
    if (profile && m_layer_events.empty()) {
        m_layer_events.resize(static_cast<size_t>(2 * c.num_hidden_layers + 1));
        m_comm_events.resize(m_tp != nullptr ? static_cast<size_t>(2 * c.num_hidden_layers) : 0);
        for (std::vector<cudaEvent_t>* events : {&m_layer_events, &m_comm_events}) {
            for (cudaEvent_t& e : *events) {
                CUDA_CHECK(cudaEventCreate(&e));
            }
        }
    }
    // Marks the start of sublayer i's all-reduce (its end is the next layer event).
    const auto comm_mark = [&](int i) {
        if (profile && !m_comm_events.empty()) {
            CUDA_CHECK(cudaEventRecord(m_comm_events[static_cast<size_t>(i)], m_stream));
        }
    };
    for (int l = 0; l < c.num_hidden_layers; ++l) {
        const cuda_model::DeviceLayer& w = m_weights.layers[static_cast<size_t>(l)];
        if (profile) {
            CUDA_CHECK(cudaEventRecord(m_layer_events[static_cast<size_t>(2 * l)], m_stream));
        }
        // h += y (the previous sublayer's output; nothing before layer 0), xq = quant(rms_norm(h)).
        cuda_model::norm_quantize_into(ws, l == 0 ? ws.h.as<uint16_t>() : ws.y.as<uint16_t>(),
                                       l == 0 ? nullptr : ws.h.as<uint16_t>(), w.input_norm.as<uint16_t>(), t_count,
                                       hidden, eps, m_stream);
        attention(l, t_count, b);
        comm_mark(2 * l);
        tp_all_reduce(ws.y.as<uint16_t>(), t_count * hidden);
        if (profile) {
            CUDA_CHECK(cudaEventRecord(m_layer_events[static_cast<size_t>(2 * l + 1)], m_stream));
        }
        if (w.is_moe) {
            // h += y; ws.xb = rms_norm(h) (bf16, for the router) and its quantization (the experts' input), one launch.
            cuda_model::norm_quantize_into(ws, ws.y.as<uint16_t>(), ws.h.as<uint16_t>(), w.post_norm.as<uint16_t>(),
                                           t_count, hidden, eps, m_stream, nullptr, nullptr, ws.xb.as<uint16_t>());
            moe(l, t_count);
        } else {
            cuda_model::norm_quantize_into(ws, ws.y.as<uint16_t>(), ws.h.as<uint16_t>(), w.post_norm.as<uint16_t>(),
                                           t_count, hidden, eps, m_stream);
            dense_mlp(w.gate_up, w.down, t_count, ws.y.as<uint16_t>(), ws.xq.as<uint8_t>(), ws.xs.as<float>(), *m_fp8,
                      m_stream);
        }
        comm_mark(2 * l + 1);
        tp_all_reduce(ws.y.as<uint16_t>(), t_count * hidden);
    }
    if (profile) {
        CUDA_CHECK(cudaEventRecord(m_layer_events.back(), m_stream));
    }
    norm_residual(m_weights.final_norm.as<uint16_t>(), t_count);  // ws.xb = final_norm(h + y)
}

std::vector<float> DeepseekV3CudaModel::last_layer_times_ms() {
    std::vector<float> times;  // [layers, 2]: attention (norm + MLA + o_proj), then the feed-forward
    if (m_layer_events.empty()) {
        return times;
    }
    CUDA_CHECK(cudaEventSynchronize(m_layer_events.back()));
    for (size_t i = 0; i + 1 < m_layer_events.size(); ++i) {
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, m_layer_events[i], m_layer_events[i + 1]));
        times.push_back(ms);
    }
    return times;
}

std::vector<float> DeepseekV3CudaModel::last_comm_times_ms() {
    std::vector<float> times;  // [layers, 2]: the attention's and the feed-forward's all-reduce
    if (m_comm_events.empty() || m_layer_events.empty()) {
        return times;
    }
    CUDA_CHECK(cudaEventSynchronize(m_layer_events.back()));
    for (size_t i = 0; i < m_comm_events.size(); ++i) {
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, m_comm_events[i], m_layer_events[i + 1]));
        times.push_back(ms);
    }
    return times;
}

std::vector<float> DeepseekV3CudaModel::last_ep_exchange_times_ms() {
    std::vector<float> times;  // [moe layers, 2]: dispatch all-gather, combine reduce-scatter
    if (m_ep_events.empty()) {
        return times;
    }
    CUDA_CHECK(cudaStreamSynchronize(m_stream));
    for (int l = 0; l < m_config.num_hidden_layers; ++l) {
        if (!m_weights.layers[static_cast<size_t>(l)].is_moe) {
            continue;
        }
        for (int pair = 0; pair < 2; ++pair) {
            float ms = 0.0f;
            CUDA_CHECK(cudaEventElapsedTime(&ms, m_ep_events[static_cast<size_t>(4 * l + 2 * pair)],
                                            m_ep_events[static_cast<size_t>(4 * l + 2 * pair + 1)]));
            times.push_back(ms);
        }
    }
    return times;
}

int DeepseekV3CudaModel::last_moe_active_experts() {
    if (m_config.n_routed_experts == 0 || m_weights.layers.empty()) {
        return 0;
    }
    // Offsets of this rank's experts (all of them, or its range under expert parallelism).
    std::vector<int32_t> offsets(static_cast<size_t>(m_weights.layers.back().experts.num_experts + 1));
    CUDA_CHECK(cudaStreamSynchronize(m_stream));
    m_ws->offsets.download(offsets.data(), offsets.size() * 4);
    int active = 0;
    for (size_t e = 0; e + 1 < offsets.size(); ++e) {
        active += offsets[e + 1] > offsets[e];
    }
    return active;
}

// h += y; ws.xb = rms_norm(h) * weight (bf16).
void DeepseekV3CudaModel::norm_residual(const uint16_t* weight, int64_t t_count) {
    cuda_model::Workspace& ws = *m_ws;
    cuda::RmsNormParams n;
    n.x = ws.y.as<uint16_t>();
    n.residual = ws.h.as<uint16_t>();
    n.weight = weight;
    n.out = ws.xb.as<uint16_t>();
    n.num_tokens = t_count;
    n.hidden = m_config.hidden_size;
    n.x_stride = n.hidden;
    n.out_stride = n.hidden;
    n.eps = static_cast<float>(m_config.rms_norm_eps);
    cuda::launch_rms_norm(n, m_stream);
}

void DeepseekV3CudaModel::logits_pass(const StepBatch& b, int64_t r0, int64_t n) {
    const ModelConfig& c = m_config;
    cuda_model::Workspace& ws = *m_ws;
    cuda::GatherRowsParams g;
    g.x = ws.xb.as<uint16_t>();
    g.rows = b.logits_indices.as<int32_t>() + r0;
    g.out = ws.last.as<uint16_t>();
    g.num_rows = n;
    g.width = c.hidden_size;
    cuda::launch_gather_rows(g, m_stream);
    cuda::Bf16GemmParams lm;
    lm.a = ws.last.as<uint16_t>();
    lm.b = m_weights.lm_head.as<uint16_t>();
    lm.c = ws.logits.data();
    lm.c_f32 = true;
    const int64_t vocab = m_tp != nullptr ? m_vocab_local : c.vocab_size;
    lm.m = n;
    lm.n = vocab;
    lm.k = c.hidden_size;
    lm.lda = c.hidden_size;
    lm.ldb = c.hidden_size;
    lm.ldc = vocab;
    m_bf16->run(lm, m_stream);
    if (m_tp != nullptr) {  // [n, vocab / tp] from every rank: [tp, n, vocab / tp], reordered by download_logits
        m_tp->all_gather(ws.logits.as<float>(), m_logits_gathered.as<float>(), n * vocab, DType::F32, m_stream);
    }
}

// The result of a step: up to kLogitsRowsPerPass rows are a view of the pinned buffer the GPU copies into (no
// host copy, no zero fill); more rows (prompt logprobs) get their own tensor.
Tensor DeepseekV3CudaModel::host_logits(int64_t rows) {
    const int64_t vocab = m_config.vocab_size;
    if (rows > cuda_model::kLogitsRowsPerPass || rows > m_ws->capacity) {
        return Tensor::zeros(DType::F32, {rows, vocab});
    }
    if (m_ws->logits_host.use_count() > 1) {  // a caller still holds the previous step's logits
        m_ws->logits_host =
            cuda_model::Workspace::pinned_logits(std::min(m_ws->capacity, cuda_model::kLogitsRowsPerPass) * vocab);
    }
    return Tensor::view(DType::F32, {rows, vocab}, m_ws->logits_host.get(), m_ws->logits_host);
}

void DeepseekV3CudaModel::download_logits(int64_t r0, int64_t n, Tensor& logits) {
    const int64_t vocab = m_config.vocab_size;
    const size_t bytes = static_cast<size_t>(n * vocab) * 4;
    float* dst = logits.data_as<float>() + r0 * vocab;
    if (!m_logits_rank) {
        // Another TP rank: the all-gather fed rank 0; copying every step's [rows, vocab] to the host here would be
        // wasted PCIe traffic (model.h: only the DP leader returns logits).
    } else if (m_tp == nullptr) {
        CUDA_CHECK(cudaMemcpyAsync(dst, m_ws->logits.data(), bytes, cudaMemcpyDeviceToHost, m_stream));
    } else {  // rank d's slice [n, vocab / tp] becomes columns [d * vocab / tp, ..) of the rows
        const auto slice = static_cast<size_t>(m_vocab_local);
        for (int d = 0; d < m_tp->size(); ++d) {
            CUDA_CHECK(cudaMemcpy2DAsync(dst + static_cast<size_t>(d) * slice, static_cast<size_t>(vocab) * 4,
                                         m_logits_gathered.as<float>() + static_cast<size_t>(d * n) * slice, slice * 4,
                                         slice * 4, static_cast<size_t>(n), cudaMemcpyDeviceToHost, m_stream));
        }
    }
    // No sync here: collect() waits for the stream.
}

// The padded graph size of a pure decode batch (one new token per sequence, contexts within the graphs' block
// tables), or 0 when the step runs eagerly.
int DeepseekV3CudaModel::graph_size_for(const ForwardBatch& b) const {
    if (m_ep != nullptr) {  // the size every replica replays this step (plan_dp_step), or none
        K2_CHECK(m_dp_graph_size == 0 ||
                     (b.is_decode() && b.num_seqs() <= m_dp_graph_size && b.max_blocks_per_seq <= m_graph_blocks),
                 "forward batch: a data-parallel decode step of {} sequences ({} blocks each) does not fit the graph "
                 "of {} every replica replays (dp_decode_only must hold only for decode batches)",
                 b.num_seqs(), b.max_blocks_per_seq, m_dp_graph_size);
        return m_dp_graph_size;
    }
    if (m_options.enforce_eager || b.num_tokens() != b.num_seqs() || b.max_blocks_per_seq > m_graph_blocks) {
        return 0;
    }
    for (int s = 0; s < b.num_seqs(); ++s) {
        if (b.query_start[s + 1] - b.query_start[s] != 1) {
            return 0;
        }
    }
    for (const int size : kGraphBatchSizes) {
        if (size >= b.num_seqs() && size <= m_options.max_num_seqs && size <= m_ws->capacity) {
            return size;
        }
    }
    return 0;
}

// Pads the decode batch to `size` sequences (padding rows write no KV: slot -1; read one block; their logits are
// computed and dropped), uploads it into the fixed graph buffers and replays the size's graph, capturing it on
// first use after one eager warm-up (which creates the cuBLASLt plans and sizes the attention workspace).
void DeepseekV3CudaModel::run_graph(const ForwardBatch& batch, int size) {
    const int width = m_graph_blocks;
    ForwardBatch padded;
    padded.token_ids = batch.token_ids;
    padded.positions = batch.positions;
    padded.slot_mapping = batch.slot_mapping;
    padded.seq_lens = batch.seq_lens;
    padded.token_ids.resize(static_cast<size_t>(size), 0);
    padded.positions.resize(static_cast<size_t>(size), 0);
    padded.slot_mapping.resize(static_cast<size_t>(size), -1);
    padded.seq_lens.resize(static_cast<size_t>(size), 1);
    padded.query_start.resize(static_cast<size_t>(size + 1));
    for (int s = 0; s <= size; ++s) {
        padded.query_start[static_cast<size_t>(s)] = s;
    }
    // Only the columns in use travel; the rest of the graph's table keeps stale ids no kernel reads.
    padded.max_blocks_per_seq = std::max(batch.max_blocks_per_seq, 1);
    padded.block_tables.assign(static_cast<size_t>(size) * static_cast<size_t>(padded.max_blocks_per_seq), 0);
    std::copy(batch.block_tables.begin(), batch.block_tables.end(), padded.block_tables.begin());
    padded.logits_indices = batch.logits_indices;
    padded.logits_indices.resize(static_cast<size_t>(size), 0);
    StepBatch& d = *m_graph_batch;
    upload_batch(padded, d, width);
    d.max_context = width * kKvBlockSize;  // the graph's bound, whatever this step's contexts are
    auto it = m_graphs.find(size);
    if (it == m_graphs.end()) {
        run_layers(d);  // warm-up: creates the cuBLASLt plans (nothing may allocate during the capture)
        logits_pass(d, 0, size);
        cudaGraph_t graph = nullptr;
        CUDA_CHECK(cudaStreamBeginCapture(m_stream, cudaStreamCaptureModeThreadLocal));
        run_layers(d);
        logits_pass(d, 0, size);
        CUDA_CHECK(cudaStreamEndCapture(m_stream, &graph));
        cudaGraphExec_t exec = nullptr;
        CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        CUDA_CHECK(cudaGraphDestroy(graph));
        it = m_graphs.emplace(size, exec).first;
    }
    CUDA_CHECK(cudaGraphLaunch(it->second, m_stream));
}

}  // namespace k2

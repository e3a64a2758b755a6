// Data + expert parallelism of DeepseekV3CudaModel (vLLM's -dp N --enable-expert-parallel on GPUs): the expert
// exchange of every MoE layer, an idle replica's part of a step, and the decode steps that every replica replays from
// a CUDA graph at one common padded size.
//
// Graph steps: when every busy replica's batch is a decode batch (ForwardBatch::dp_decode_only), all ranks pick the
// same size G (the smallest graph size >= the largest replica's tokens, from data every rank has), every replica, an
// idle one included, runs its graph of size G (an idle one on padding rows only), and every exchange moves G / tp rows
// per rank. Which rows are real tokens reaches the device before the replay (m_ep_counts), so one graph serves every
// mix of replica sizes up to G. Graphs are captured lazily, on a size's first step: the choice is common to all ranks,
// so every rank runs the capture's warm-up (which executes the exchanges; the capture itself does not) in the same
// step, and the collectives stay matched. Other steps run eagerly, their exchanges padded to the largest replica.
#include <algorithm>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/moe_ops.h"
#include "model/cuda/cuda_workspace.h"
#include "model/cuda/deepseek_v3_cuda.h"

namespace k2 {

bool DeepseekV3CudaModel::dp_graph_fits(int size) const {
    return size <= m_options.max_num_seqs && size <= m_dp_max_tokens && size <= m_ws->capacity;
}

// Every rank computes the same plan from the step's common data: dp_num_tokens, dp_decode_only and the options.
void DeepseekV3CudaModel::plan_dp_step(const ForwardBatch& batch) {
    const int32_t padded = batch.dp_padded_tokens();
    m_dp_graph_size = 0;
    if (batch.dp_decode_only && !m_options.enforce_eager) {
        for (const int size : kGraphBatchSizes) {
            if (size >= padded && dp_graph_fits(size)) {
                m_dp_graph_size = size;
                break;
            }
        }
    }
    m_dp_exchange_rows = m_dp_graph_size > 0 ? m_dp_graph_size : padded;
    std::vector<int32_t> counts(static_cast<size_t>(2 * m_dp_size));  // [2, dp]: real tokens, then forward rows
    for (int d = 0; d < m_dp_size; ++d) {
        const int32_t n = m_dp_tokens[static_cast<size_t>(d)];
        counts[static_cast<size_t>(d)] = n;
        counts[static_cast<size_t>(m_dp_size + d)] = m_dp_graph_size > 0 ? m_dp_graph_size : n;
    }
    // Pageable memory: staged before the call returns, so `counts` may go; the buffer never moves (graphs read it).
    CUDA_CHECK(cudaMemcpyAsync(m_ep_counts.data(), counts.data(), counts.size() * 4, cudaMemcpyHostToDevice, m_stream));
}

// A replica with no tokens in this step. In a graph step it replays the step's graph on padding rows, as vLLM's idle
// DP ranks run dummy batches: the same collectives in the same order as the busy replicas, captures included.
// Otherwise it joins every MoE layer's exchange with an all-padding slice (nothing else of the layer runs).
void DeepseekV3CudaModel::dp_idle_step(const ForwardBatch& batch) {
    if (m_dp_graph_size > 0) {
        run_graph(batch, m_dp_graph_size);
    } else if (m_dp_exchange_rows > 0) {
        for (int l = 0; l < m_config.num_hidden_layers; ++l) {
            if (m_weights.layers[static_cast<size_t>(l)].is_moe) {
                moe_over_dp(l, 0);
            }
        }
    }
    CUDA_CHECK(cudaStreamSynchronize(m_stream));
}

// Data + expert parallelism, vLLM's all-gather / reduce-scatter dispatch (its "naive" all2all backend): TP rank r of
// every replica contributes the r-th slice of its replica's tokens, padded to the step's common slice size (zero
// rows, which drop_padding_rows keeps away from the experts); every rank runs all the job's tokens through its own
// experts; the reduce-scatter hands each rank the expert sum of its slice. Into ws.y go the rank's shared-expert
// partial on all its replica's tokens plus that sum on its slice's rows, so the TP all-reduce after the layer
// completes every token (with tp = 1 the slice is the whole replica). Called with t_count = 0 by an idle replica.
void DeepseekV3CudaModel::moe_over_dp(int layer, int64_t t_count) {
    const cuda_model::DeviceLayer& w = m_weights.layers[static_cast<size_t>(layer)];
    cuda_model::Workspace& ws = *m_ws;
    const int64_t hidden = m_config.hidden_size;
    const int64_t slice_rows = (m_dp_exchange_rows + m_tp_size - 1) / m_tp_size;  // per rank (plan_dp_step)
    const int64_t all_rows = slice_rows * m_ep->size();
    const int64_t begin = t_count * m_tp_rank / m_tp_size;
    const int64_t mine = t_count * (m_tp_rank + 1) / m_tp_size - begin;
    const bool has_shared = w.gate_up.n > 0;
    if (has_shared && t_count > 0) {  // on the replica's own tokens, before ws.xq takes the gathered ones
        dense_mlp(w.gate_up, w.down, t_count, ws.shared.as<uint16_t>(), ws.xq.as<uint8_t>(), ws.xs.as<float>(), *m_fp8,
                  m_stream);
    }
    uint16_t* slice = ws.y.as<uint16_t>();  // [slice_rows, hidden]: the rank's tokens, then zero rows
    if (mine > 0) {
        CUDA_CHECK(cudaMemcpyAsync(slice, ws.xb.as<uint16_t>() + begin * hidden, static_cast<size_t>(mine * hidden) * 2,
                                   cudaMemcpyDeviceToDevice, m_stream));
    }
    if (slice_rows > mine) {
        CUDA_CHECK(
            cudaMemsetAsync(slice + mine * hidden, 0, static_cast<size_t>((slice_rows - mine) * hidden) * 2, m_stream));
    }
    ep_mark(layer, 0);
    m_ep->all_gather(slice, ws.xb.data(), slice_rows * hidden, DType::BF16, m_stream);  // ws.xb [all_rows, hidden]
    ep_mark(layer, 1);
    cuda_model::quantize_into(ws, ws.xb.as<uint16_t>(), all_rows, hidden, m_stream);
    routed_experts(layer, all_rows, slice_rows);
    cuda::MoeCombineParams cp;
    cp.y = ws.yg.as<uint16_t>();
    cp.pair_row = ws.pair_row.as<int32_t>();
    cp.topk_weights = ws.topk_weights.as<float>();
    cp.out = ws.y.as<uint16_t>();  // [all_rows, hidden] this rank's experts' part of every token
    cp.num_tokens = all_rows;
    cp.hidden = hidden;
    cp.top_k = static_cast<int>(m_config.num_experts_per_tok);
    cuda::launch_moe_combine(cp, m_stream);
    ep_mark(layer, 2);
    m_ep->reduce_scatter_bf16(ws.y.as<uint16_t>(), ws.xb.as<uint16_t>(), slice_rows * hidden, m_stream);
    ep_mark(layer, 3);
    if (t_count == 0) {
        return;
    }
    // ws.y [T, hidden] = shared partial + the slice's sum (ws.xb rows) on rows [begin, begin + mine): a combine with
    // one "expert" of weight 1 per token adds them exactly (fp32 sum, one rounding), -1 rows outside the slice.
    cuda::MoeCombineParams add;
    add.y = ws.xb.as<uint16_t>();
    add.pair_row = m_ep_rows_pair.as<int32_t>();
    add.topk_weights = m_ep_rows_weight.as<float>();
    add.shared = has_shared ? ws.shared.as<uint16_t>() : nullptr;
    add.out = ws.y.as<uint16_t>();
    add.num_tokens = t_count;
    add.hidden = hidden;
    add.top_k = 1;
    cuda::launch_moe_combine(add, m_stream);
}

void DeepseekV3CudaModel::drop_padding_rows(int64_t slice_rows) {
    cuda::MoeEpDropParams p;
    p.topk_ids = m_ws->topk_ids.as<int32_t>();
    p.counts = m_ep_counts.as<int32_t>();
    p.dp = m_dp_size;
    p.tp = m_tp_size;
    p.slice_rows = slice_rows;
    p.top_k = static_cast<int>(m_config.num_experts_per_tok);
    cuda::launch_moe_ep_drop_padding(p, m_stream);
}

void DeepseekV3CudaModel::ep_mark(int layer, int which) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(m_stream, &capture));
    if (!m_profile_layers || capture != cudaStreamCaptureStatusNone) {  // graph replays have no events
        return;
    }
    if (m_ep_events.empty()) {
        m_ep_events.resize(static_cast<size_t>(4 * m_config.num_hidden_layers));
        for (cudaEvent_t& e : m_ep_events) {
            CUDA_CHECK(cudaEventCreate(&e));
        }
    }
    CUDA_CHECK(cudaEventRecord(m_ep_events[static_cast<size_t>(4 * layer + which)], m_stream));
}

}  // namespace k2

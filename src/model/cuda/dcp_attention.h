// Decode context parallelism (vLLM's -dcp, vllm.md §5) in the CUDA model runner. With MLA every TP rank would hold
// the whole latent cache; the DCP group (dcp ranks of the TP group) splits it by token instead: position p lives on
// DCP rank p % dcp at offset (p % 64) / dcp of its block, so a rank's block holds 64 / dcp tokens and the same
// block tables address every rank's share. Attention (prefill and decode alike) all-gathers the group's absorbed
// queries, attends over the local tokens (mla_ops.h's attention with an lse output), all-gathers the partial
// outputs and lses and merges each rank's own heads (dcp_merge.h). The CPU model's attend_dcp is the reference.
//
// Split-KV: the general attention kernel gives one CTA per token and 64 heads, so a decode batch of 16 would run
// on 16 SMs. The local keys are therefore cut into ranges of whole blocks, each range a query row of its own
// (dist::plan_dcp_key_ranges); the ranges' partials are merged on the rank first (keeping their log-sum-exp), then
// the ranks' partials.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/cuda/device_buffer.h"
#include "backend/cuda/mla_ops.h"
#include "dist/dcp.h"
#include "model/cuda/tp_comm.h"
#include "model/forward_batch.h"

namespace k2::cuda_model {

class DcpAttention {
public:
    DcpAttention(std::unique_ptr<TpComm> comm, int rank, int num_sms);

    int size() const { return m_size; }
    int rank() const { return m_rank; }
    int block_tokens() const;  // tokens of a KV block stored on each rank: 64 / dcp

    // Every token's slot in this rank's cache (-1: stored on another rank).
    void local_slots(const ForwardBatch& batch, std::vector<int64_t>& slots) const;
    // The step's key ranges (split-KV rows) of every token, uploaded on `stream`; heads: this rank's.
    void prepare_step(const ForwardBatch& batch, int heads, cudaStream_t stream);

    struct Args {
        const uint16_t* q_abs = nullptr;  // [T, heads, lat + rope] this rank's absorbed queries
        cuda::LatentCacheRef cache;       // this rank's share (block_tokens() tokens per block)
        uint16_t* out = nullptr;          // [T, heads, lat] bf16
        int64_t num_tokens = 0;
        int heads = 0;
        int lat = 0;
        int rope = 0;
        float softmax_scale = 1.0f;
    };
    void attend(const Args& args, cudaStream_t stream);

private:
    int choose_splits(const ForwardBatch& batch, int heads) const;

    std::unique_ptr<TpComm> m_comm;
    int m_size = 1;
    int m_rank = 0;
    int m_num_sms = 0;
    int m_max_blocks = 0;            // block-table width of the step
    dist::DcpKeyRanges m_plan;       // the step's query rows (prepare_step)
    cuda::DeviceBuffer m_tables;     // [splits * S, max_blocks] i32 (m_plan's, on the device)
    cuda::DeviceBuffer m_row_seq;    // [splits * T] i32
    cuda::DeviceBuffer m_last_keys;  // [splits * T] i32
    // Attention buffers (grown on demand).
    cuda::DeviceBuffer m_q_all;      // [dcp, T, heads, entry] bf16 gathered queries
    cuda::DeviceBuffer m_q_rows;     // [splits, T, dcp * heads, entry] bf16: the group's heads per query row
    cuda::DeviceBuffer m_out_part;   // [splits, T, dcp * heads, lat] bf16 this rank's partials
    cuda::DeviceBuffer m_lse_part;   // [splits, T, dcp * heads] f32
    cuda::DeviceBuffer m_out_local;  // [T, dcp * heads, lat] bf16 the key ranges merged (splits > 1)
    cuda::DeviceBuffer m_lse_local;  // [T, dcp * heads] f32
    cuda::DeviceBuffer m_out_all;    // [dcp, T, dcp * heads, lat] bf16
    cuda::DeviceBuffer m_lse_all;    // [dcp, T, dcp * heads] f32
};

}  // namespace k2::cuda_model

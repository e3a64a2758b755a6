// Decode context parallelism (vLLM's -dcp, vllm.md §5) in the CUDA model runner. With MLA every TP rank would hold
// the whole latent cache; the DCP group (dcp ranks of the TP group) splits it by token instead: position p lives on
// DCP rank p % dcp at offset (p % 64) / dcp of its block, so a rank's block holds 64 / dcp tokens and the same
// block tables address every rank's share. Attention (prefill and decode alike) all-gathers the group's absorbed
// queries, attends over the local tokens (mla_ops.h's attention with an lse output), all-gathers the partial
// outputs and lses and merges each rank's own heads (dcp_merge.h). The CPU model's attend_dcp is the reference.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/cuda/device_buffer.h"
#include "backend/cuda/mla_ops.h"
#include "model/cuda/tp_comm.h"
#include "model/forward_batch.h"

namespace k2::cuda_model {

class DcpAttention {
public:
    DcpAttention(std::unique_ptr<TpComm> comm, int rank);

    int size() const { return m_size; }
    int rank() const { return m_rank; }
    int block_tokens() const;  // tokens of a KV block stored on each rank: 64 / dcp

    // Host side of a step: every token's slot in this rank's cache (-1: stored on another rank), and every
    // token's last visible key among this rank's tokens (-1: none). Returns the bound of those keys + 1.
    void local_slots(const ForwardBatch& batch, std::vector<int64_t>& slots) const;
    int local_last_keys(const ForwardBatch& batch, std::vector<int32_t>& last_keys) const;

    struct Args {
        const uint16_t* q_abs = nullptr;        // [T, heads, lat + rope] this rank's absorbed queries
        cuda::LatentCacheRef cache;             // this rank's share (block_tokens() tokens per block)
        const int32_t* block_tables = nullptr;  // [S, max_blocks_per_seq]
        const int32_t* token_seq = nullptr;     // [T]
        const int32_t* last_keys = nullptr;     // [T] (local_last_keys)
        uint16_t* out = nullptr;                // [T, heads, lat] bf16
        int64_t num_tokens = 0;
        int heads = 0;
        int lat = 0;
        int rope = 0;
        int max_blocks_per_seq = 0;
        int max_local_context = 0;  // local_last_keys' return value
        float softmax_scale = 1.0f;
    };
    void attend(const Args& args, cudaStream_t stream);

private:
    std::unique_ptr<TpComm> m_comm;
    int m_size = 1;
    int m_rank = 0;
    cuda::DeviceBuffer m_q_all;     // [dcp, T, heads, entry] bf16 gathered queries
    cuda::DeviceBuffer m_q_group;   // [T, dcp * heads, entry] bf16: the group's heads per token
    cuda::DeviceBuffer m_out_part;  // [T, dcp * heads, lat] bf16 this rank's partials
    cuda::DeviceBuffer m_lse_part;  // [T, dcp * heads] f32
    cuda::DeviceBuffer m_out_all;   // [dcp, T, dcp * heads, lat] bf16
    cuda::DeviceBuffer m_lse_all;   // [dcp, T, dcp * heads] f32
};

}  // namespace k2::cuda_model

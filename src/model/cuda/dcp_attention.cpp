#include "model/cuda/dcp_attention.h"

#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/dcp_merge.h"
#include "core/error.h"
#include "dist/dcp.h"
#include "model/cuda/cuda_workspace.h"
#include "model/model.h"

namespace k2::cuda_model {

DcpAttention::DcpAttention(std::unique_ptr<TpComm> comm, int rank)
    : m_comm(std::move(comm)), m_size(m_comm->size()), m_rank(rank) {
    K2_CHECK(m_size >= 1 && kKvBlockSize % m_size == 0 && m_size <= 16,
             "--decode-context-parallel-size {} must divide the {}-token KV block (and be at most 16)", m_size,
             kKvBlockSize);
}

int DcpAttention::block_tokens() const {
    return kKvBlockSize / m_size;
}

void DcpAttention::local_slots(const ForwardBatch& b, std::vector<int64_t>& slots) const {
    slots.resize(b.slot_mapping.size());
    for (size_t t = 0; t < slots.size(); ++t) {
        const int64_t slot = b.slot_mapping[t];
        const int64_t offset = slot % kKvBlockSize;
        const bool mine = slot >= 0 && offset % m_size == m_rank;
        slots[t] = mine ? slot / kKvBlockSize * block_tokens() + offset / m_size : -1;
    }
}

int DcpAttention::local_last_keys(const ForwardBatch& b, std::vector<int32_t>& last_keys) const {
    last_keys.resize(b.positions.size());
    int bound = 0;
    for (size_t t = 0; t < last_keys.size(); ++t) {
        const int64_t visible = dist::dcp_local_token_count(int64_t{b.positions[t]} + 1, m_rank, m_size);
        last_keys[t] = static_cast<int32_t>(visible - 1);
        bound = std::max(bound, static_cast<int>(visible));
    }
    return bound;
}

void DcpAttention::attend(const Args& a, cudaStream_t stream) {
    const int64_t t_count = a.num_tokens;
    const int64_t entry = a.lat + a.rope;
    const int group_heads = m_size * a.heads;
    const size_t q_bytes = static_cast<size_t>(t_count * a.heads * entry) * 2;  // one rank's [T, heads, entry]
    ensure(m_q_all, q_bytes * static_cast<size_t>(m_size));
    ensure(m_q_group, q_bytes * static_cast<size_t>(m_size));
    ensure(m_out_part, static_cast<size_t>(t_count * group_heads * a.lat) * 2);
    ensure(m_lse_part, static_cast<size_t>(t_count * group_heads) * 4);
    ensure(m_out_all, m_out_part.num_bytes() * static_cast<size_t>(m_size));
    ensure(m_lse_all, m_lse_part.num_bytes() * static_cast<size_t>(m_size));

    // Every rank attends the whole group's heads over its own tokens: [dcp, T, heads, entry] -> [T, dcp * heads, ..].
    m_comm->all_gather(a.q_abs, m_q_all.data(), t_count * a.heads * entry, DType::BF16, stream);
    const size_t row = static_cast<size_t>(a.heads * entry) * 2;
    for (int d = 0; d < m_size; ++d) {
        CUDA_CHECK(cudaMemcpy2DAsync(m_q_group.as<char>() + d * row, row * static_cast<size_t>(m_size),
                                     m_q_all.as<char>() + static_cast<size_t>(d) * q_bytes, row, row,
                                     static_cast<size_t>(t_count), cudaMemcpyDeviceToDevice, stream));
    }
    cuda::MlaAttentionParams at;
    at.q = m_q_group.as<uint16_t>();
    at.cache = a.cache;
    at.block_tables = a.block_tables;
    at.token_seq = a.token_seq;
    at.positions = a.last_keys;
    at.out = m_out_part.as<uint16_t>();
    at.lse = m_lse_part.as<float>();
    at.num_tokens = t_count;
    at.heads = group_heads;
    at.lat = a.lat;
    at.rope = a.rope;
    at.block_size = block_tokens();
    at.max_blocks_per_seq = a.max_blocks_per_seq;
    at.max_context = a.max_local_context;
    at.softmax_scale = a.softmax_scale;
    cuda::launch_mla_attention(at, stream);

    m_comm->all_gather(m_out_part.data(), m_out_all.data(), t_count * group_heads * a.lat, DType::BF16, stream);
    m_comm->all_gather(m_lse_part.data(), m_lse_all.data(), t_count * group_heads, DType::F32, stream);
    cuda::DcpMergeParams mp;
    mp.outs = m_out_all.as<uint16_t>();
    mp.lses = m_lse_all.as<float>();
    mp.out = a.out;
    mp.num_tokens = t_count;
    mp.dcp = m_size;
    mp.rank = m_rank;
    mp.heads = a.heads;
    mp.lat = a.lat;
    cuda::launch_dcp_merge(mp, stream);
}

}  // namespace k2::cuda_model

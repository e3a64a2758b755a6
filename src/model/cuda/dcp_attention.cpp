#include "model/cuda/dcp_attention.h"

#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/dcp_merge.h"
#include "core/error.h"
#include "dist/dcp.h"
#include "model/cuda/cuda_workspace.h"
#include "model/model.h"

namespace k2::cuda_model {

namespace {

template <typename T>
void upload(cuda::DeviceBuffer& buf, const std::vector<T>& host, cudaStream_t stream) {
    ensure(buf, std::max<size_t>(host.size() * sizeof(T), 16));
    if (!host.empty()) {
        CUDA_CHECK(cudaMemcpyAsync(buf.data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, stream));
    }
}

}  // namespace

DcpAttention::DcpAttention(std::unique_ptr<TpComm> comm, int rank, int num_sms)
    : m_comm(std::move(comm)), m_size(m_comm->size()), m_rank(rank), m_num_sms(num_sms) {
    K2_CHECK(m_size >= 1 && kKvBlockSize % m_size == 0 && m_size <= cuda::kDcpMaxPartials,
             "--decode-context-parallel-size {} must divide the {}-token KV block (and be at most {})", m_size,
             kKvBlockSize, cuda::kDcpMaxPartials);
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

// Enough query rows for about two CTAs per SM (the kernel: one CTA per row and 64 heads), and no more partials than
// the merge takes; plan_dcp_key_ranges keeps ranges of whole blocks. Prefill steps have rows to spare: one range.
int DcpAttention::choose_splits(const ForwardBatch& b, int heads) const {
    const int64_t ctas = b.num_tokens() * ((int64_t{m_size} * heads + 63) / 64);
    const int64_t wanted = (2 * int64_t{m_num_sms} + ctas - 1) / std::max<int64_t>(ctas, 1);
    return static_cast<int>(std::clamp<int64_t>(wanted, 1, cuda::kDcpMaxPartials));
}

void DcpAttention::prepare_step(const ForwardBatch& b, int heads, cudaStream_t stream) {
    m_max_blocks = b.max_blocks_per_seq;
    m_plan = dist::plan_dcp_key_ranges(b.positions, b.query_start, b.block_tables, m_max_blocks, m_rank, m_size,
                                       choose_splits(b, heads));
    upload(m_tables, m_plan.tables, stream);
    upload(m_row_seq, m_plan.row_seq, stream);
    upload(m_last_keys, m_plan.last_keys, stream);
}

void DcpAttention::attend(const Args& a, cudaStream_t stream) {
    const int64_t t_count = a.num_tokens;
    const int64_t entry = a.lat + a.rope;
    const int group_heads = m_size * a.heads;
    const int64_t rows = m_plan.splits * t_count;  // query rows: every token once per key range
    const size_t q_bytes = static_cast<size_t>(t_count * a.heads * entry) * 2;  // one rank's [T, heads, entry]
    ensure(m_q_all, q_bytes * static_cast<size_t>(m_size));
    ensure(m_q_rows, q_bytes * static_cast<size_t>(m_size * m_plan.splits));
    ensure(m_out_part, static_cast<size_t>(rows * group_heads * a.lat) * 2);
    ensure(m_lse_part, static_cast<size_t>(rows * group_heads) * 4);
    ensure(m_out_all, static_cast<size_t>(m_size * t_count * group_heads * a.lat) * 2);
    ensure(m_lse_all, static_cast<size_t>(m_size * t_count * group_heads) * 4);

    // Every rank attends the whole group's heads over its own tokens: [dcp, T, heads, entry] -> [T, dcp * heads, ..],
    // once per key range.
    m_comm->all_gather(a.q_abs, m_q_all.data(), t_count * a.heads * entry, DType::BF16, stream);
    const size_t head_block = static_cast<size_t>(a.heads * entry) * 2;
    for (int k = 0; k < m_plan.splits; ++k) {
        char* dst = m_q_rows.as<char>() + static_cast<size_t>(k) * q_bytes * static_cast<size_t>(m_size);
        for (int d = 0; d < m_size; ++d) {
            CUDA_CHECK(cudaMemcpy2DAsync(dst + d * head_block, head_block * static_cast<size_t>(m_size),
                                         m_q_all.as<char>() + static_cast<size_t>(d) * q_bytes, head_block, head_block,
                                         static_cast<size_t>(t_count), cudaMemcpyDeviceToDevice, stream));
        }
    }
    cuda::MlaAttentionParams at;
    at.q = m_q_rows.as<uint16_t>();
    at.cache = a.cache;
    at.block_tables = m_tables.as<int32_t>();
    at.token_seq = m_row_seq.as<int32_t>();
    at.positions = m_last_keys.as<int32_t>();
    at.out = m_out_part.as<uint16_t>();
    at.lse = m_lse_part.as<float>();
    at.num_tokens = rows;
    at.heads = group_heads;
    at.lat = a.lat;
    at.rope = a.rope;
    at.block_size = block_tokens();
    at.max_blocks_per_seq = m_max_blocks;
    at.max_context = m_plan.max_local_keys;
    at.softmax_scale = a.softmax_scale;
    cuda::launch_mla_attention(at, stream);

    // The key ranges merge here first (every head: one partial per rank left), so the all-gather carries
    // [T, G, lat] per rank rather than splits times that.
    const uint16_t* part = m_out_part.as<uint16_t>();  // [T, G, lat] after the local merge
    const float* part_lse = m_lse_part.as<float>();    // [T, G]
    if (m_plan.splits > 1) {
        ensure(m_out_local, static_cast<size_t>(t_count * group_heads * a.lat) * 2);
        ensure(m_lse_local, static_cast<size_t>(t_count * group_heads) * 4);
        cuda::DcpMergeParams lm;
        lm.outs = part;
        lm.lses = part_lse;
        lm.out = m_out_local.as<uint16_t>();
        lm.lse_out = m_lse_local.as<float>();
        lm.num_tokens = t_count;
        lm.num_partials = m_plan.splits;
        lm.dcp = 1;  // all G heads, no rank selection
        lm.heads = group_heads;
        lm.lat = a.lat;
        cuda::launch_dcp_merge(lm, stream);
        part = m_out_local.as<uint16_t>();
        part_lse = m_lse_local.as<float>();
    }
    m_comm->all_gather(part, m_out_all.data(), t_count * group_heads * a.lat, DType::BF16, stream);
    m_comm->all_gather(part_lse, m_lse_all.data(), t_count * group_heads, DType::F32, stream);
    cuda::DcpMergeParams mp;  // [dcp, T, G, ..]: every rank's partial of every head, merged into this rank's heads
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

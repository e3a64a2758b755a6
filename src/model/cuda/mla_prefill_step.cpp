#include "model/cuda/mla_prefill_step.h"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "backend/cuda/mla_prefill.h"
#include "model/cuda/cuda_workspace.h"
#include "model/cuda/deepseek_v3_cuda.h"
#include "model/model.h"

namespace k2::cuda_model {
namespace {

int64_t min_tokens() {
    static const int64_t value = [] {
        const char* env = std::getenv("K2_MLA_PREFILL_MIN_TOKENS");
        return env != nullptr ? std::max<int64_t>(1, std::atoll(env)) : int64_t{128};
    }();
    return value;
}

template <typename T>
void upload(cuda::DeviceBuffer& buf, const std::vector<T>& host, cudaStream_t stream) {
    const size_t bytes = std::max<size_t>(host.size() * sizeof(T), 16);
    if (buf.num_bytes() < bytes) {
        buf = cuda::DeviceBuffer(std::max(bytes, buf.num_bytes() * 2));
    }
    if (!host.empty()) {
        CUDA_CHECK(cudaMemcpyAsync(buf.data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, stream));
    }
}

}  // namespace

bool mla_prefill_supported(const ModelConfig& c) {
    return c.qk_nope_head_dim == cuda::kMlaPrefillNope && c.qk_rope_head_dim == cuda::kMlaPrefillRope &&
           c.v_head_dim == cuda::kMlaPrefillDv && c.kv_lora_rank % 8 == 0;
}

int64_t mla_prefill_ctx_capacity(const ModelConfig& c, int64_t max_tokens) {
    return mla_prefill_supported(c) ? 2 * max_tokens : 0;
}

void prepare_mla_prefill(const ForwardBatch& b, const ModelConfig& c, int64_t ctx_capacity, StepBatch& d,
                         cudaStream_t stream) {
    static const bool disabled = std::getenv("K2_DISABLE_MLA_PREFILL") != nullptr;
    d.mla_prefill = false;
    if (disabled || ctx_capacity == 0 || !mla_prefill_supported(c) || b.num_tokens() < min_tokens()) {
        return;
    }
    int64_t num_ctx = 0;
    int max_q_len = 0;
    for (int s = 0; s < b.num_seqs(); ++s) {
        const int q_len = b.query_start[s + 1] - b.query_start[s];
        const int k_len = b.seq_lens[static_cast<size_t>(s)];
        // The kernel places query i at k_len - q_len + i: the new tokens must be the context's last ones.
        if (q_len > k_len || (q_len > 0 && b.positions[static_cast<size_t>(b.query_start[s])] != k_len - q_len)) {
            return;
        }
        num_ctx += k_len;
        max_q_len = std::max(max_q_len, q_len);
    }
    if (num_ctx > ctx_capacity || max_q_len == 0) {
        return;
    }
    d.host_cu_q.assign(b.query_start.begin(), b.query_start.end());
    d.host_cu_k.assign(1, 0);
    d.host_ctx_slots.clear();
    d.host_ctx_slots.reserve(static_cast<size_t>(num_ctx));
    for (int s = 0; s < b.num_seqs(); ++s) {
        const int k_len = b.seq_lens[static_cast<size_t>(s)];
        d.host_cu_k.push_back(d.host_cu_k.back() + k_len);
        const int32_t* table = b.block_tables.data() + static_cast<size_t>(s) * b.max_blocks_per_seq;
        for (int j = 0; j < k_len; ++j) {
            d.host_ctx_slots.push_back(int64_t{table[j / kKvBlockSize]} * kKvBlockSize + j % kKvBlockSize);
        }
    }
    upload(d.cu_seqlens_q, d.host_cu_q, stream);
    upload(d.cu_seqlens_k, d.host_cu_k, stream);
    upload(d.ctx_slots, d.host_ctx_slots, stream);
    d.num_ctx = num_ctx;
    d.max_q_len = max_q_len;
    d.mla_prefill = true;
}

void run_mla_prefill_attention(cuda::Bf16GemmRunner& gemm, Workspace& ws, const StepBatch& b, const DeviceLayer& w,
                               const ModelConfig& c, const cuda::LatentCacheRef& cache, const float* inv_freq,
                               float rope_scale, float softmax_scale, cudaStream_t stream) {
    cuda::MlaPrefillForwardParams p;
    p.q = ws.q.as<uint16_t>();
    p.positions = b.positions.as<int32_t>();
    p.inv_freq = inv_freq;
    p.rope_scale = rope_scale;
    p.cache = cache;
    p.ctx_slots = b.ctx_slots.as<int64_t>();
    p.w_uk = w.w_uk.as<uint16_t>();
    p.w_uv = w.w_uv.as<uint16_t>();
    p.cu_seqlens_q = b.cu_seqlens_q.as<int32_t>();
    p.cu_seqlens_k = b.cu_seqlens_k.as<int32_t>();
    p.latent_ctx = ws.latent_ctx.as<uint16_t>();
    p.k_nope_ctx = ws.k_nope_ctx.as<uint16_t>();
    p.v_ctx = ws.v_ctx.as<uint16_t>();
    p.out = ws.o.as<uint16_t>();
    p.num_tokens = b.num_tokens;
    p.num_ctx = b.num_ctx;
    p.num_seqs = b.num_seqs;
    p.heads = static_cast<int>(c.num_attention_heads);
    p.lat = static_cast<int>(c.kv_lora_rank);
    p.max_q_len = b.max_q_len;
    p.softmax_scale = softmax_scale;
    cuda::run_mla_prefill_forward(gemm, p, stream);
}

}  // namespace k2::cuda_model

// Host launchers of mla_ops.h: validate shapes, pointers and alignment, then launch (mla_ops.cu).
#include "backend/cuda/mla_ops.h"

#include <cmath>
#include <cstdint>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/mla_ops_detail.h"

namespace k2::cuda {
namespace {

bool aligned16(const void* ptr) {
    return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

// lat: a multiple of 32 up to 512 (the attention splits lat / 2 dims per warp in 16-dim MMA columns);
// rope: even, 2..64.
void check_dims(const char* op, int lat, int rope) {
    K2_CHECK(lat > 0 && lat <= kMlaMaxLatent && lat % 32 == 0, "{}: kv_lora_rank {} must be a multiple of 32 in 32..{}",
             op, lat, kMlaMaxLatent);
    K2_CHECK(rope > 0 && rope <= kMlaMaxRope && rope % 2 == 0, "{}: rope_dim {} must be even in 2..{}", op, rope,
             kMlaMaxRope);
}

void check_cache(const char* op, const LatentCacheRef& cache) {
    K2_CHECK(cache.data != nullptr && cache.num_slots > 0, "{}: the latent cache is not allocated", op);
    K2_CHECK(aligned16(cache.data), "{}: the latent cache must be 16-byte aligned", op);
    K2_CHECK(!cache.fp8 || (cache.kv_scale > 0.0f && std::isfinite(cache.kv_scale)),
             "{}: FP8 cache kv_scale {} must be positive and finite", op, cache.kv_scale);
}

}  // namespace

void launch_latent_store(const LatentStoreParams& p, cudaStream_t stream) {
    if (p.num_tokens == 0) {
        return;
    }
    K2_CHECK(p.num_tokens > 0 && p.num_tokens <= INT32_MAX, "latent_store: bad num_tokens {}", p.num_tokens);
    check_dims("latent_store", p.lat, p.rope);
    check_cache("latent_store", p.cache);
    K2_CHECK(p.kv_stride >= p.lat + p.rope, "latent_store: kv_stride {} < lat + rope = {}", p.kv_stride,
             p.lat + p.rope);
    K2_CHECK(p.kv != nullptr && p.norm_weight != nullptr && p.positions != nullptr && p.slot_mapping != nullptr &&
                 p.inv_freq != nullptr,
             "latent_store: null input pointer");
    K2_CHECK(p.eps >= 0.0f, "latent_store: eps {} must not be negative", p.eps);
    CUDA_CHECK(detail::launch_latent_store_kernel(p, stream));
}

void launch_query_rope(const QueryRopeParams& p, cudaStream_t stream) {
    if (p.num_tokens == 0) {
        return;
    }
    K2_CHECK(p.num_tokens > 0 && p.num_tokens <= INT32_MAX, "query_rope: bad num_tokens {}", p.num_tokens);
    K2_CHECK(p.heads > 0, "query_rope: heads {} must be positive", p.heads);
    K2_CHECK(p.nope >= 0 && p.lat >= 0, "query_rope: negative nope {} or lat {}", p.nope, p.lat);
    K2_CHECK(p.rope > 0 && p.rope <= kMlaMaxRope && p.rope % 2 == 0, "query_rope: rope_dim {} must be even in 2..{}",
             p.rope, kMlaMaxRope);
    K2_CHECK(p.q != nullptr && p.q_abs != nullptr && p.positions != nullptr && p.inv_freq != nullptr,
             "query_rope: null pointer");
    CUDA_CHECK(detail::launch_query_rope_kernel(p, stream));
}

void launch_mla_attention(const MlaAttentionParams& p, cudaStream_t stream) {
    if (p.num_tokens == 0) {
        return;
    }
    K2_CHECK(p.num_tokens > 0 && p.num_tokens <= INT32_MAX, "mla_attention: bad num_tokens {}", p.num_tokens);
    K2_CHECK(p.heads > 0 && p.heads <= 65535 * 64, "mla_attention: bad head count {}", p.heads);
    check_dims("mla_attention", p.lat, p.rope);
    check_cache("mla_attention", p.cache);
    K2_CHECK(p.block_size > 0 && p.max_blocks_per_seq > 0, "mla_attention: bad block_size {} / max_blocks_per_seq {}",
             p.block_size, p.max_blocks_per_seq);
    K2_CHECK(p.max_context >= 0 && p.max_context <= int64_t{p.max_blocks_per_seq} * p.block_size,
             "mla_attention: max_context {} does not fit {} blocks of {} tokens", p.max_context, p.max_blocks_per_seq,
             p.block_size);
    K2_CHECK(p.q != nullptr && p.block_tables != nullptr && p.token_seq != nullptr && p.positions != nullptr &&
                 p.out != nullptr,
             "mla_attention: null pointer");
    // q rows are read with 16-byte cp.async when (lat + rope) % 8 == 0; out is written as bf16 pairs.
    K2_CHECK(aligned16(p.q) && reinterpret_cast<uintptr_t>(p.out) % 4 == 0,
             "mla_attention: q must be 16-byte and out 4-byte aligned");
    K2_CHECK(p.softmax_scale > 0.0f && std::isfinite(p.softmax_scale), "mla_attention: bad softmax_scale {}",
             p.softmax_scale);
    const detail::MlaAttentionTiling tiling = detail::mla_attention_tiling(p);
    CUDA_CHECK(detail::launch_mla_attention_kernel(p, tiling, stream));
}

}  // namespace k2::cuda

#include "backend/cuda/mla_decode.h"

#include <algorithm>
#include <cmath>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/launch_detail.h"

namespace k2::cuda {

int mla_decode_num_splits(const MlaDecodeParams& p, int num_sms) {
    if (p.num_splits > 0) {
        return p.num_splits;
    }
    const int64_t ctas = p.num_seqs * mla_decode_head_groups(p.num_heads);
    const int max_pages = (p.max_seq_len + kMlaPageTokens - 1) / kMlaPageTokens;
    // One CTA per SM (224 KB of shared memory each): one wave of splits.
    return static_cast<int>(std::clamp<int64_t>(num_sms / std::max<int64_t>(ctas, 1), 1, std::max(max_pages, 1)));
}

int64_t mla_decode_workspace_floats(const MlaDecodeParams& p, int num_splits) {
    return p.num_seqs * p.num_heads * num_splits * (kMlaLatent + 2);
}

void launch_mla_decode(const MlaDecodeParams& p, cudaStream_t stream) {
    if (p.num_seqs == 0) {
        return;
    }
    K2_CHECK(p.num_heads > 0 && (p.num_heads < kMlaHeadsPerCta || p.num_heads % kMlaHeadsPerCta == 0),
             "mla decode: num_heads {} must be below {} or a multiple of it", p.num_heads, kMlaHeadsPerCta);
    K2_CHECK(p.max_seq_len >= 1 && p.max_seq_len <= p.max_blocks_per_seq * kMlaPageTokens,
             "mla decode: max_seq_len {} does not fit {} blocks of {} tokens", p.max_seq_len, p.max_blocks_per_seq,
             kMlaPageTokens);
    K2_CHECK((p.cache != nullptr) != (p.cache_fp8 != nullptr), "mla decode: set exactly one of cache and cache_fp8");
    K2_CHECK(p.q != nullptr && p.block_tables != nullptr && p.seq_lens != nullptr && p.out != nullptr &&
                 p.workspace != nullptr,
             "mla decode: null pointer");
    K2_CHECK(p.cache_fp8 == nullptr || (std::isfinite(p.kv_scale) && p.kv_scale > 0.0f),
             "mla decode: kv_scale {} must be a positive finite number", p.kv_scale);
    const void* cache = p.cache != nullptr ? static_cast<const void*>(p.cache) : p.cache_fp8;
    K2_CHECK(reinterpret_cast<uintptr_t>(p.q) % 16 == 0 && reinterpret_cast<uintptr_t>(cache) % 16 == 0 &&
                 reinterpret_cast<uintptr_t>(p.out) % 16 == 0 && reinterpret_cast<uintptr_t>(p.workspace) % 16 == 0,
             "mla decode: q, cache, out and workspace must be 16-byte aligned");
    int device = 0;
    int num_sms = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
    const int num_splits = mla_decode_num_splits(p, num_sms);
    const int max_pages = (p.max_seq_len + kMlaPageTokens - 1) / kMlaPageTokens;
    const int pages_per_split = (max_pages + num_splits - 1) / num_splits;
    CUDA_CHECK(detail::launch_mla_decode_kernels(p, num_splits, pages_per_split, stream));
}

}  // namespace k2::cuda

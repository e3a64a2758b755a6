// Raw kernel launches of mla_ops.h (mla_ops.cu): no validation, they return the launch status. The public
// launch_* functions in mla_ops.cpp validate the parameters first.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

#include "backend/cuda/mla_ops.h"

namespace k2::cuda::detail {

cudaError_t launch_latent_store_kernel(const LatentStoreParams& params, cudaStream_t stream);
cudaError_t launch_query_rope_kernel(const QueryRopeParams& params, cudaStream_t stream);

// The attention kernel works on 64 query rows per CTA: (token, head) pairs of heads_per_cta heads of
// tokens_per_cta consecutive tokens.
inline constexpr int kMlaAttnRows = 64;
inline constexpr int kMlaAttnKeys = 64;  // keys per shared-memory tile

struct MlaAttentionTiling {
    int heads_per_cta = 0;   // min(heads, 64)
    int tokens_per_cta = 0;  // 64 / heads_per_cta
    int padded_dim = 0;      // lat + rope rounded up to 64: the swizzled shared-memory row (zero padded)
};

inline MlaAttentionTiling mla_attention_tiling(const MlaAttentionParams& p) {
    MlaAttentionTiling t;
    t.heads_per_cta = std::min(p.heads, kMlaAttnRows);
    t.tokens_per_cta = kMlaAttnRows / std::max(t.heads_per_cta, 1);
    t.padded_dim = (p.lat + p.rope + 63) / 64 * 64;
    return t;
}

// Dynamic shared memory of one CTA: the query tile, two key tiles, the P tiles of the 4 warp pairs, the pair
// row statistics (8 warps x 16 rows) and the CTA's token sequences / positions (64 each).
inline int mla_attention_smem_bytes(int padded_dim) {
    return 3 * kMlaAttnRows * padded_dim * 2 + 4 * 16 * kMlaAttnKeys * 2 + 8 * 16 * 4 + 2 * kMlaAttnRows * 4;
}

cudaError_t launch_mla_attention_kernel(const MlaAttentionParams& params, const MlaAttentionTiling& tiling,
                                        cudaStream_t stream);

}  // namespace k2::cuda::detail

// Raw launches of the TMA + wgmma decode GEMM (fp8_gemm_wgmma.cu); validation lives in fp8_gemm_wgmma.cpp.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "backend/cuda/fp8_gemm.h"

namespace k2::cuda::detail {

// One instantiation: rows (weight rows per CTA) in {64, 128}; tokens_tile in {16, 32, 64, 128} >= num_tokens;
// mcast (CTAs along n sharing each activation tile by TMA multicast) 1, or 2 / 4 with rows 128 and tokens_tile >= 64.
struct WgmmaVariant {
    int rows = 128;
    int tokens_tile = 16;
    int mcast = 1;
};

// grid [ceil(n / rows) rounded up to mcast, splits] in clusters of [mcast, splits]. tmap_w's box must be
// [rows, 128], tmap_x's [tokens_tile / mcast, 128]. l2_ahead: the weights' L2 prefetch distance in k blocks (0: none).
// pdl: 0 off; 1 launched with programmatic stream serialization (its weight loads may start before the previous
// kernel ends); 2 the same kernel-side order without the launch attribute (a diagnostic).
cudaError_t launch_fp8_gemm_wgmma_kernel(const CUtensorMap& tmap_w, const CUtensorMap& tmap_x, const Fp8GemmParams& p,
                                         const WgmmaVariant& variant, int splits, int kb_per_split, int l2_ahead,
                                         int pdl, cudaStream_t stream);

// How many clusters of `splits` CTAs of the variant fit on the device at once.
cudaError_t fp8_gemm_wgmma_max_active_clusters(const WgmmaVariant& variant, int splits, int* num_clusters);

}  // namespace k2::cuda::detail

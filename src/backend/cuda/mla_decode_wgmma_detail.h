// Raw launch of the wgmma MLA decode kernels (kernels/mla_decode_wgmma.cuh); validation, the split choice and the
// tensor map are in mla_decode.cpp.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "backend/cuda/mla_decode.h"

namespace k2::cuda::detail {

// Pages each CTA bulk-prefetches into L2 beyond its two shared-memory tiles; the environment variable
// K2_MLA_WG_L2_AHEAD overrides both, for A/B runs. 0: every distance measured slower on the H200 (batch 16 x 8192:
// BF16 58.0 / 62.3 / 73.5 µs at 0 / 2 / 4 pages ahead, FP8 65.8 / 70.8 / 72.6).
inline constexpr int kMlaWgL2AheadBf16 = 0;
inline constexpr int kMlaWgL2AheadFp8 = 0;

// Variants of the wgmma kernel, for A/B runs (session 7 against session 6, docs/perf/mla-decode-wgmma.md); the
// environment variables are read on every launch (mla_decode.cpp).
struct MlaWgOptions {
    int l2_ahead = 0;          // pages bulk-prefetched into L2 beyond the two tiles
    bool fp8_staged = false;   // FP8 cache: mla_decode_wgmma_fp8_staged_kernel (env K2_MLA_WG_FP8=staged; measured
                               // slower) instead of the register-fed mla_decode_wgmma_fp8_kernel
    bool fast_combine = true;  // > 2 splits: mla_decode_wgmma_combine_kernel, launched as a programmatic dependent
                               // (env K2_MLA_WG_COMBINE=v6: mla_decode.cuh's combine kernel, f32 out only)
};

// cache_map: the BF16 cache as [rows, 576] bf16 with box [64, 64] and the 128B swizzle (unused for the FP8 cache).
cudaError_t launch_mla_decode_wgmma_kernels(const MlaDecodeParams& p, const CUtensorMap& cache_map, int num_splits,
                                            int pages_per_split, const MlaWgOptions& options, cudaStream_t stream);

}  // namespace k2::cuda::detail

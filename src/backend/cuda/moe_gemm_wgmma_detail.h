// Raw launches of the wgmma grouped MoE decode GEMM (moe_gemm_wgmma.cu); validation, the tensor map and the
// launch shape live in moe_gemm_wgmma.cpp.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "backend/cuda/moe_ops.h"

namespace k2::cuda::detail {

inline constexpr int kMoeWgmmaRows = 64;          // weight rows per work item (one consumer warpgroup)
inline constexpr int kMoeWgmmaMaxExperts = 512;   // the schedule of every CTA lives in shared memory

// max_n in {16, 32, 64}: the pass size and the largest wgmma N; grid: CTAs (persistent, any count >= 1).
// tmap_w: p.w as [num_experts * n, k] e4m3 with box [64, 128] and the 128B swizzle.
cudaError_t launch_moe_gemm_wgmma_kernel(const CUtensorMap& tmap_w, const Fp8GroupedGemmParams& p, int max_n,
                                         int grid, cudaStream_t stream);

// How many CTAs of the max_n instantiation fit on one SM.
cudaError_t moe_gemm_wgmma_blocks_per_sm(int max_n, int* blocks);

}  // namespace k2::cuda::detail

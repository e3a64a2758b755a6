// Raw launch of the one-launch grouped FP8 GEMM of MoE prefill (moe_prefill_gemm.cu, kernel
// kernels/moe_prefill_gemm.cuh); validation and the tensor maps live in moe_prefill_gemm.cpp.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "backend/cuda/moe_ops.h"

namespace k2::cuda::detail {

// Weight rows per tile of the 64 / 128-row tiles (two halves of 128).
inline constexpr int kMoePrefillBlockN = 256;
inline constexpr int kMoePrefillBoxedBlockN = 128;  // weight rows per tile of the boxed (192 / 256-row) tiles
inline constexpr int kMoePrefillBoxRows = 64;       // x rows per TMA box of the boxed tiles

// block_m: x rows per tile, 64, 128, 192 or 256; cluster: 1, or 2 (block_m >= 128: pairs of CTAs sharing by
// multicast the weight tile (128) or the x tile (192 / 256)); expert_major: the item order
// (kernels/moe_prefill_gemm.cuh); grid: CTAs of the persistent launch (any count >= 1; a multiple of cluster).
// tmap_x: p.x as [rows bound, k] e4m3, box [block_m, 128] (192 / 256: [64, 128]); tmap_w: p.w as
// [num_experts * n, k] e4m3, box [256 / cluster, 128] (192 / 256: [128, 128]); both with the 128B swizzle.
cudaError_t launch_moe_prefill_gemm_kernel(const CUtensorMap& tmap_x, const CUtensorMap& tmap_w,
                                           const Fp8GroupedGemmParams& p, int block_m, int cluster, bool expert_major,
                                           int grid, cudaStream_t stream);

// How many clusters of the (block_m, cluster) instantiation fit on the device at once (one CTA per SM: ~200 KB).
cudaError_t moe_prefill_gemm_max_active_clusters(int block_m, int cluster, int* clusters);

}  // namespace k2::cuda::detail

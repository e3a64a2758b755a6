// Raw launches of moe_ops.h (moe_ops.cu); they do no validation and return the launch status. The public
// launch_* functions in moe_ops.cpp validate, throw k2::Error and call these.
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/moe_ops.h"

namespace k2::cuda::detail {

// The permute kernel gives each expert one thread and a column of per-warp counts in shared memory.
inline constexpr int kMoeMaxExperts = 512;

// One block of 512 threads.
cudaError_t launch_moe_permute_kernel(const MoePermuteParams& params, cudaStream_t stream);
// One block per permuted row.
cudaError_t launch_moe_gather_kernel(const MoeGatherParams& params, cudaStream_t stream);
// grid [n / 64, num_experts]; max_tiles in {1, 2, 4, 8} bounds the 8-token tiles of one pass.
cudaError_t launch_fp8_grouped_gemm_decode_kernel(const Fp8GroupedGemmParams& params, int max_tiles,
                                                  cudaStream_t stream);
// grid: the blocks that fit on the device at once; l2_ahead >= 0.
cudaError_t launch_fp8_grouped_gemm_decode_persistent(const Fp8GroupedGemmParams& params, int max_tiles, int l2_ahead,
                                                      cudaStream_t stream);
// grid [num_tokens, ceil(hidden / 1024)] up to 64 tokens, [num_tokens, ceil(hidden / 2048)] past that.
cudaError_t launch_moe_combine_kernel(const MoeCombineParams& params, cudaStream_t stream);
// Blocks of 256 threads, one pair per thread.
cudaError_t launch_moe_ep_drop_padding_kernel(const MoeEpDropParams& params, cudaStream_t stream);

}  // namespace k2::cuda::detail

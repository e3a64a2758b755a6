// FP8 x FP8 block-scaled GEMM for decode batches (num_tokens <= 128), y = x @ w^T with the conventions of
// fp8_gemm.h (Fp8GemmParams): TMA + 128B swizzle + an mbarrier ring feeding wgmma.m64nNk32 e4m3 with the weights
// as wgmma's M side, fp32 promotion per 128-k block, split-K over a thread-block cluster (kernels/fp8_gemm_wgmma.cuh).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/fp8_gemm.h"

namespace k2::cuda {

inline constexpr int64_t kWgmmaMaxTokens = 128;

struct Fp8GemmWgmmaConfig {
    int rows = 0;          // weight rows per CTA: 128 (two consumer warpgroups) or 64 (one; two CTAs per SM)
    int tokens_tile = 0;   // wgmma N: num_tokens padded to 16, 32, 64 or 128
    int splits = 0;        // CTAs of a cluster sharing the k blocks of one 128-row tile
    int kb_per_split = 0;  // 128-k blocks per split (the last split may have fewer, never none)
    int mcast = 1;         // 128-row CTAs along n sharing each activation tile by TMA multicast (1, 2 or 4)
    int l2_ahead = 0;      // L2 bulk prefetch of the weight rows this many k blocks past the TMA ring (0: none)
    int pdl = 0;           // programmatic dependent launch: 1 on (the weight loads overlap the previous kernel's
                           // tail); 2 its issue order without the launch attribute (a diagnostic); 0 off
};

// Overrides of the cost model's choice (tuning and tests); splits / rows / mcast 0 = the model's (or env
// K2_WGMMA_SPLITS / K2_WGMMA_ROWS / K2_WGMMA_MCAST where set); l2_ahead / pdl -1 = the default (or env
// K2_WGMMA_L2_AHEAD / K2_WGMMA_PDL where set; pdl 2 is a diagnostic, see Fp8GemmWgmmaConfig). Defaults: no L2
// prefetch, no multicast, no pdl (docs/perf/kernels.md "Session 8: v5 at m 16-128"). None of them changes a bit of
// the result. pdl = 1 needs a caller whose previous kernel on the stream does not write the weights (they are read
// before griddepcontrol.wait); x, its scales and y are safe. mcast 2 / 4 needs rows 128 (forced or chosen), more
// than 32 tokens and mcast x splits <= 8.
struct Fp8GemmWgmmaOptions {
    int splits = 0;
    int rows = 0;
    int l2_ahead = -1;
    int pdl = -1;
    int mcast = 0;
};

// The launch shape for (num_tokens, n, k) from a cost model; options.rows (64 / 128) and options.splits (clamped
// to [1, 8] and to the k-block count) and options.mcast (1, 2, 4) override it where > 0, options.l2_ahead (0..64)
// and pdl (0 / 1 / 2) where >= 0. Needs a CUDA device (it reads cluster occupancy).
Fp8GemmWgmmaConfig fp8_gemm_wgmma_config(int64_t num_tokens, int64_t n, int64_t k,
                                         const Fp8GemmWgmmaOptions& options = {});

// num_tokens == 0 is a no-op; num_tokens > 128 is refused. Requirements beyond fp8_gemm.h's: x and w 16-byte
// aligned, x_stride a multiple of 16.
void launch_fp8_gemm_wgmma(const Fp8GemmParams& params, cudaStream_t stream, const Fp8GemmWgmmaOptions& options = {});

}  // namespace k2::cuda

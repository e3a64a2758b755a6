// The grouped FP8 expert GEMM of MoE PREFILL in one launch (TMA + 128B swizzle + mbarrier ring + wgmma e4m3, the
// permuted tokens as wgmma's M side): moe_ops.h's Fp8GroupedGemmParams contract (x [P, k] e4m3 in expert order,
// expert-blocked activation scales, weights [num_experts, n, k] with [num_experts, n / 128, k / 128] scales), with
// the offsets read on the DEVICE only: no host copy, no sync, CUDA-graph capturable. Replaces the per-expert
// cuBLASLt calls of run_fp8_grouped_gemm_prefill(_lanes). Kernel and design: kernels/moe_prefill_gemm.cuh;
// numbers: docs/perf/moe-prefill-gemm.md.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/moe_ops.h"

namespace k2::cuda {

// Overrides for tests and the benchmark; 0 = the default.
struct MoePrefillGemmOptions {
    int grid = 0;     // CTAs of the persistent launch (default: one per SM)
    int block_m = 0;  // x rows per tile: 64, 128 (x 256 weight rows), 192 or 256 (x 128 weight rows)
    int order = 0;    // item order: 1 m-tile major, 2 expert major (default 1)
    // 1, or 2: pairs of CTAs share by TMA multicast the weight tile (block_m 128: two m tiles of an expert) or the
    // x tile (block_m 192 / 256: two n blocks of one m tile); default 1.
    int cluster = 0;
};

// The tile shape measured best on the H200 for `num_rows` routed rows over `num_experts` experts
// (docs/perf/moe-prefill-gemm.md): 256 x 128 tiles from 128 rows per expert on (an 8k prefill of Kimi-K2: ~170;
// session 8), 128 x 256 tiles from 96, 64 x 256 tiles below (2k: ~43, where they stream the weights at about the
// copy rate). The thresholds between the two measured points (~43, ~170) are estimates from the tile counts.
MoePrefillGemmOptions moe_prefill_gemm_options(int64_t num_rows, int num_experts);

// Rows of x / y the kernel can address (the x tensor map's row count; P itself stays on the device).
inline constexpr int64_t kMoePrefillMaxRows = int64_t{1} << 24;

// Whether the launch takes these params (else use the per-expert prefill forms): an sm_90 device, 1..512 experts,
// n and k multiples of 128, num_experts * n < 2^31, x / w / y 16-byte aligned.
bool moe_prefill_gemm_supported(const Fp8GroupedGemmParams& params);

// num_experts == 0 or max_rows_per_expert == 0 is a no-op; max_rows_per_expert is otherwise unused (the tiles
// follow each expert's device row count, whatever it is). P = offsets[num_experts] must be < kMoePrefillMaxRows.
// Only rows [0, P) of y are written; x rows at or past P are never read.
void launch_fp8_grouped_gemm_prefill_wgmma(const Fp8GroupedGemmParams& params, cudaStream_t stream,
                                           const MoePrefillGemmOptions& options = {});

}  // namespace k2::cuda

// The grouped FP8 expert GEMM of MoE decode on FP8 GEMM v5's design (TMA + 128B swizzle + mbarrier ring + wgmma
// with the expert weights as wgmma's M side and the expert's tokens as N): same contract as moe_ops.h's
// launch_fp8_grouped_gemm_decode (Fp8GroupedGemmParams: x [P, k] e4m3 in expert order, expert-blocked activation
// scales, weights [num_experts, n, k] with [num_experts, n / 128, k / 128] scales, device offsets, one launch, CUDA
// graph capturable). Kernel and design: kernels/moe_gemm_wgmma.cuh; numbers: docs/perf/kernels.md.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/moe_ops.h"

namespace k2::cuda {

// Overrides for tests and tuning; 0 = the default.
struct MoeGemmWgmmaOptions {
    int max_n = 0;  // pass size / largest wgmma N: 16, 32 or 64 (default: 16 for max_rows_per_expert <= 16, else 32)
    int grid = 0;   // CTAs of the persistent launch (default: as many as fit at once)
};

// Whether this kernel takes the params (else use launch_fp8_grouped_gemm_decode's kernel): an sm_90 device, at
// most 512 experts and num_experts * n < 2^31 (the weight tensor map's rows).
bool moe_gemm_wgmma_supported(const Fp8GroupedGemmParams& params);

// max_rows_per_expert == 0 is a no-op. It only bounds the pass size: an expert with more rows than the pass takes
// more passes (each streams its weights again), so correctness never depends on the bound. Requirements beyond
// moe_ops.h's: x and w 16-byte aligned, num_experts <= 512, num_experts * n < 2^31.
void launch_fp8_grouped_gemm_wgmma(const Fp8GroupedGemmParams& params, cudaStream_t stream,
                                   const MoeGemmWgmmaOptions& options = {});

}  // namespace k2::cuda

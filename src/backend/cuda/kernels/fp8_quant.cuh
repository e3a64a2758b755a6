// Kernels of fp8_quant.h. Each thread owns 8 consecutive channels (one 16-byte bf16 load); the 16 lanes of a
// half-warp own one 128-channel group, so a group's amax is 4 shuffles and no shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "backend/cuda/fp8_quant.h"
#include "backend/cuda/kernels/bf16_chunks.cuh"

namespace k2::cuda::kernels {

// grid: ceil(num_tokens * inter / 8 / (256 * kSiluVecs)), block: 256. Thread tid of block b owns vectors
// b * 256 * kSiluVecs + j * 256 + tid (j < kSiluVecs): 8 gate + 8 up values each, all loads issued first.
inline constexpr int kSiluVecs = 1;  // 2 measured slower (56-61% vs 63-66% of the copy rate)

__global__ void __launch_bounds__(256) silu_mul_quant_kernel(const __grid_constant__ SiluMulQuantParams p) {
    const int64_t vecs_per_token = p.inter / 8;
    const int64_t total = p.num_tokens * vecs_per_token;
    uint4 g_raw[kSiluVecs];
    uint4 u_raw[kSiluVecs];
#pragma unroll
    for (int j = 0; j < kSiluVecs; ++j) {
        const int64_t idx = static_cast<int64_t>(blockIdx.x) * 256 * kSiluVecs + j * 256 + threadIdx.x;
        if (idx < total) {
            const uint16_t* row = p.gate_up + (idx / vecs_per_token) * p.gate_up_stride;
            const int64_t vec = idx % vecs_per_token;
            g_raw[j] = *reinterpret_cast<const uint4*>(row + vec * 8);
            u_raw[j] = *reinterpret_cast<const uint4*>(row + p.inter + vec * 8);
        }
    }
#pragma unroll
    for (int j = 0; j < kSiluVecs; ++j) {
        const int64_t idx = static_cast<int64_t>(blockIdx.x) * 256 * kSiluVecs + j * 256 + threadIdx.x;
        // NOTE: a half-warp's 16 vectors are one 128-group and total is a multiple of 16, so a half-warp is
        // either wholly in range or wholly out: the shuffles never see a missing lane.
        if (idx < total) {
            const int64_t token = idx / vecs_per_token;
            const int64_t vec = idx % vecs_per_token;
            float g[8];
            float u[8];
            bf16x8_to_float(g_raw[j], g);
            bf16x8_to_float(u_raw[j], u);
            float v[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                v[i] = __fdividef(g[i], 1.0f + __expf(-g[i])) * u[i];
            }
            float scale;
            const uint2 q = quantize_group8(v, scale);
            *reinterpret_cast<uint2*>(p.out + token * p.out_stride + vec * 8) = q;
            if (threadIdx.x % 16 == 0) {
                p.out_scale[(vec / 16) * p.scale_stride + token] = scale;
            }
        }
    }
}

// grid: ceil(num_tokens * hidden / 8 / 256), block: 256.
__global__ void __launch_bounds__(256) fp8_quant_kernel(const __grid_constant__ Fp8QuantParams p) {
    const int64_t vecs_per_token = p.hidden / 8;
    const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= p.num_tokens * vecs_per_token) {
        return;
    }
    const int64_t token = idx / vecs_per_token;
    const int64_t vec = idx % vecs_per_token;
    float v[8];
    bf16x8_to_float(*reinterpret_cast<const uint4*>(p.x + token * p.x_stride + vec * 8), v);
    float scale;
    const uint2 q = quantize_group8(v, scale);
    *reinterpret_cast<uint2*>(p.out + token * p.out_stride + vec * 8) = q;
    if (threadIdx.x % 16 == 0) {
        p.out_scale[(vec / 16) * p.scale_stride + token] = scale;
    }
}

}  // namespace k2::cuda::kernels

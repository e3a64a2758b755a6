// Kernels of fp8_quant.h. Each thread owns 8 consecutive channels (one 16-byte bf16 load); the 16 lanes of a
// half-warp own one 128-channel group, so a group's amax is 4 shuffles and no shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "backend/cuda/fp8_quant.h"

namespace k2::cuda::kernels {

inline constexpr int kQuantThreads = 128;  // rms_norm_quant: one block per token

struct alignas(16) Bf16x8 {
    __nv_bfloat162 v[4];
};

__device__ __forceinline__ void bf16x8_to_float(const uint4& raw, float (&out)[8]) {
    const auto& packed = reinterpret_cast<const Bf16x8&>(raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 f = __bfloat1622float2(packed.v[i]);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
    }
}

__device__ __forceinline__ uint4 float_to_bf16x8(const float (&in)[8]) {
    Bf16x8 packed;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        packed.v[i] = __floats2bfloat162_rn(in[2 * i], in[2 * i + 1]);
    }
    return reinterpret_cast<const uint4&>(packed);
}

// Quantizes 8 values whose 128-group spans the 16 lanes of this half-warp; returns the 8 e4m3 bytes and the
// group's scale. One reciprocal per group instead of a division per element (IEEE division made the kernels
// instruction-bound); it can move a value across a rounding boundary of e4m3 versus the reference's division,
// which the tests allow (rare one-code flips).
// The shuffles name only this half-warp: the other half may have left its loop already.
__device__ __forceinline__ uint2 quantize_group8(const float (&v)[8], float& scale) {
    const unsigned half_mask = 0xFFFFu << (threadIdx.x & 16u);
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        amax = fmaxf(amax, fabsf(v[i]));
    }
#pragma unroll
    for (int offset = 8; offset > 0; offset >>= 1) {
        amax = fmaxf(amax, __shfl_xor_sync(half_mask, amax, offset));
    }
    scale = fmaxf(amax, 1e-10f) / 448.0f;
    const float inv_scale = 1.0f / scale;
    // Two values per cvt (cvt.rn.satfinite.e4m3x2.f32, first value in the low byte); SATFINITE is the reference's
    // clamp to +-448, so no separate min/max (the kernels are instruction-bound, docs/perf/kernels.md).
    uint32_t pairs[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 f = make_float2(v[2 * i] * inv_scale, v[2 * i + 1] * inv_scale);
        pairs[i] = __nv_cvt_float2_to_fp8x2(f, __NV_SATFINITE, __NV_E4M3);
    }
    uint2 out;
    out.x = pairs[0] | (pairs[1] << 16);
    out.y = pairs[2] | (pairs[3] << 16);
    return out;
}

// grid: [num_tokens], block: kQuantThreads. One pass over the row: each thread keeps its (up to kRowVecs)
// 16-byte vectors in registers between the sum of squares and the quantization, so the row is read once and all of
// a thread's loads are in flight together.
inline constexpr int kRowVecs = 8;  // hidden <= 8 * 8 * kQuantThreads = 8192

__global__ void __launch_bounds__(kQuantThreads) rms_norm_quant_kernel(const __grid_constant__ RmsNormQuantParams p) {
    const int64_t token = blockIdx.x;
    const int num_vecs = static_cast<int>(p.hidden / 8);
    const uint16_t* x_row = p.x + token * p.x_stride;
    uint16_t* res_row = p.residual != nullptr ? p.residual + token * p.hidden : nullptr;
    uint4 raw[kRowVecs];
#pragma unroll
    for (int i = 0; i < kRowVecs; ++i) {
        const int vec = threadIdx.x + i * kQuantThreads;
        if (vec < num_vecs) {
            raw[i] = *reinterpret_cast<const uint4*>(x_row + vec * 8);
        }
    }
    if (res_row != nullptr) {
#pragma unroll
        for (int i = 0; i < kRowVecs; ++i) {
            const int vec = threadIdx.x + i * kQuantThreads;
            if (vec < num_vecs) {
                float v[8];
                float r[8];
                bf16x8_to_float(raw[i], v);
                bf16x8_to_float(*reinterpret_cast<const uint4*>(res_row + vec * 8), r);
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    v[e] += r[e];
                }
                raw[i] = float_to_bf16x8(v);  // normalize the bf16-rounded sum, as the stored residual holds it
                *reinterpret_cast<uint4*>(res_row + vec * 8) = raw[i];
            }
        }
    }
    float sum_sq = 0.0f;
#pragma unroll
    for (int i = 0; i < kRowVecs; ++i) {
        if (threadIdx.x + i * kQuantThreads < num_vecs) {
            float v[8];
            bf16x8_to_float(raw[i], v);
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                sum_sq += v[e] * v[e];
            }
        }
    }
    __shared__ float warp_sums[kQuantThreads / 32];
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        sum_sq += __shfl_xor_sync(0xffffffffu, sum_sq, offset);
    }
    if (threadIdx.x % 32 == 0) {
        warp_sums[threadIdx.x / 32] = sum_sq;
    }
    __syncthreads();
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kQuantThreads / 32; ++w) {
        total += warp_sums[w];
    }
    const float inv_rms = rsqrtf(total / static_cast<float>(p.hidden) + p.eps);
#pragma unroll
    for (int i = 0; i < kRowVecs; ++i) {
        const int vec = threadIdx.x + i * kQuantThreads;
        if (vec < num_vecs) {
            float v[8];
            float w[8];
            bf16x8_to_float(raw[i], v);
            bf16x8_to_float(*reinterpret_cast<const uint4*>(p.weight + vec * 8), w);
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                v[e] = v[e] * inv_rms * w[e];  // fp32 throughout, as vLLM's fused norm+quant (no bf16 round trip)
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

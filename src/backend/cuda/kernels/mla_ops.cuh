// Kernels of mla_ops.h besides the attention (kernels/mla_attention.cuh): the latent KV store and the query RoPE.
// Both follow the CPU references operation by operation in fp32 (cpu::rms_norm, cpu::rope_interleaved,
// cpu::write_latent_cache). Products are written with __fmul_rn / __fsub_rn / __fadd_rn so that nvcc does not
// contract them into FMAs the CPU reference does not use (the results then differ from the CPU by the summation
// order of the RMS statistic and by the cosf/sinf ulp only).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "backend/cuda/mla_ops.h"

namespace k2::cuda::kernels {

inline constexpr int kLatentStoreThreads = 128;
inline constexpr int kQueryRopeThreads = 256;

__device__ __forceinline__ float mla_bf16_to_float(uint16_t bits) {
    return __uint_as_float(uint32_t{bits} << 16);
}

__device__ __forceinline__ uint16_t mla_float_to_bf16(float f) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));  // round to nearest even, as core float_to_bf16
}

// cos / sin of positions * inv_freq[i] in fp32 times `scale`, as cpu::rope_interleaved computes them.
__device__ __forceinline__ float2 mla_rope_cos_sin(int32_t position, float inv_freq, float scale) {
    const float angle = __fmul_rn(static_cast<float>(position), inv_freq);
    return make_float2(__fmul_rn(cosf(angle), scale), __fmul_rn(sinf(angle), scale));
}

// (x0, x1) rotated: x0 c - x1 s, x0 s + x1 c.
__device__ __forceinline__ float2 mla_rotate(float x0, float x1, float2 cs) {
    return make_float2(__fsub_rn(__fmul_rn(x0, cs.x), __fmul_rn(x1, cs.y)),
                       __fadd_rn(__fmul_rn(x0, cs.y), __fmul_rn(x1, cs.x)));
}

// Stores one value into the latent cache: bf16 (nearest even) or e4m3(value * inv_scale), saturating to +-448.
__device__ __forceinline__ void mla_store_cache(const LatentCacheRef& cache, int64_t index, float value,
                                                float inv_scale) {
    if (cache.fp8) {
        static_cast<uint8_t*>(cache.data)[index] =
            static_cast<uint8_t>(__nv_cvt_float_to_fp8(__fmul_rn(value, inv_scale), __NV_SATFINITE, __NV_E4M3));
    } else {
        static_cast<uint16_t*>(cache.data)[index] = mla_float_to_bf16(value);
    }
}

// grid: [num_tokens], block: kLatentStoreThreads. One token per CTA; each thread keeps lat / 128 <= 4 values.
__global__ void __launch_bounds__(kLatentStoreThreads)
    latent_store_kernel(const __grid_constant__ LatentStoreParams p) {
    constexpr int kPerThread = kMlaMaxLatent / kLatentStoreThreads;
    __shared__ float warp_sums[kLatentStoreThreads / 32];
    const int64_t token = blockIdx.x;
    const int64_t slot = p.slot_mapping[token];
    if (slot < 0) {
        return;  // padding token: its slot is left alone (uniform over the CTA)
    }
    const uint16_t* x = p.kv + token * p.kv_stride;  // [lat + rope] bf16
    float v[kPerThread];
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
        const int i = static_cast<int>(threadIdx.x) + k * kLatentStoreThreads;
        v[k] = i < p.lat ? mla_bf16_to_float(x[i]) : 0.0f;
        sum = __fadd_rn(sum, __fmul_rn(v[k], v[k]));
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
        sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    }
    if (threadIdx.x % 32 == 0) {
        warp_sums[threadIdx.x / 32] = sum;
    }
    __syncthreads();
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kLatentStoreThreads / 32; ++w) {
        total += warp_sums[w];
    }
    const float inv = 1.0f / sqrtf(total / static_cast<float>(p.lat) + p.eps);  // IEEE sqrt and division
    const float inv_scale = 1.0f / p.cache.kv_scale;
    const int entry = p.lat + p.rope;
    const int64_t base = slot * entry;
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
        const int i = static_cast<int>(threadIdx.x) + k * kLatentStoreThreads;
        if (i < p.lat) {
            const float y = __fmul_rn(mla_bf16_to_float(p.norm_weight[i]), __fmul_rn(v[k], inv));
            mla_store_cache(p.cache, base + i, y, inv_scale);
        }
    }
    const int32_t position = p.positions[token];
    for (int i = static_cast<int>(threadIdx.x); i < p.rope / 2; i += kLatentStoreThreads) {
        const float2 cs = mla_rope_cos_sin(position, p.inv_freq[i], p.rope_scale);
        const float2 y = mla_rotate(mla_bf16_to_float(x[p.lat + 2 * i]), mla_bf16_to_float(x[p.lat + 2 * i + 1]), cs);
        mla_store_cache(p.cache, base + p.lat + 2 * i, y.x, inv_scale);
        mla_store_cache(p.cache, base + p.lat + 2 * i + 1, y.y, inv_scale);
    }
}

// grid: [num_tokens], block: kQueryRopeThreads; thread -> (head, pair) of the token.
__global__ void __launch_bounds__(kQueryRopeThreads) query_rope_kernel(const __grid_constant__ QueryRopeParams p) {
    const int64_t token = blockIdx.x;
    const int half = p.rope / 2;
    const int32_t position = p.positions[token];
    for (int idx = static_cast<int>(threadIdx.x); idx < p.heads * half; idx += kQueryRopeThreads) {
        const int head = idx / half;
        const int i = idx % half;
        const float2 cs = mla_rope_cos_sin(position, p.inv_freq[i], p.rope_scale);
        const uint16_t* src = p.q + (token * p.heads + head) * (p.nope + p.rope) + p.nope + 2 * i;
        uint16_t* dst = p.q_abs + (token * p.heads + head) * (p.lat + p.rope) + p.lat + 2 * i;
        const float2 y = mla_rotate(mla_bf16_to_float(src[0]), mla_bf16_to_float(src[1]), cs);
        dst[0] = mla_float_to_bf16(y.x);
        dst[1] = mla_float_to_bf16(y.y);
    }
}

}  // namespace k2::cuda::kernels

// Device helpers shared by the row kernels (model_ops.cuh, fp8_quant.cuh, row_norm.cuh): bf16 <-> fp32 of single
// values and of 8-element (16-byte) chunks, and the 1x128-group e4m3 quantization of a half-warp's chunks.
// Inline functions only: several .cu files include this, so no __global__ kernel may live here.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace k2::cuda::kernels {

__device__ __forceinline__ float bf16_bits_to_float(uint16_t bits) {
    return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

__device__ __forceinline__ uint16_t float_to_bf16_bits(float f) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

// Chunk c of a bf16 row = elements [8c, 8c + 8); elements at or past `hidden` read as 0 (adding 0 * 0 to a sum
// of squares changes nothing, so a partial last chunk sums exactly like a shorter one).
__device__ __forceinline__ void load_chunk(const uint16_t* row, int64_t c, int64_t hidden, bool vec8, float (&v)[8]) {
    if (vec8) {
        const uint4 raw = reinterpret_cast<const uint4*>(row)[c];
        const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            v[2 * i] = __uint_as_float(words[i] << 16);  // the low half is the lower address (little endian)
            v[2 * i + 1] = __uint_as_float(words[i] & 0xFFFF0000u);
        }
        return;
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        const int64_t i = c * 8 + e;
        v[e] = i < hidden ? bf16_bits_to_float(row[i]) : 0.0f;
    }
}

// Rounds each value to bf16 (nearest even) and stores the elements of chunk c that lie below `hidden`.
__device__ __forceinline__ void store_chunk(uint16_t* row, int64_t c, int64_t hidden, bool vec8, const float (&v)[8]) {
    if (vec8) {
        uint32_t words[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            words[i] = static_cast<uint32_t>(float_to_bf16_bits(v[2 * i])) |
                       (static_cast<uint32_t>(float_to_bf16_bits(v[2 * i + 1])) << 16);
        }
        reinterpret_cast<uint4*>(row)[c] = make_uint4(words[0], words[1], words[2], words[3]);
        return;
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        const int64_t i = c * 8 + e;
        if (i < hidden) {
            row[i] = float_to_bf16_bits(v[e]);
        }
    }
}

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

}  // namespace k2::cuda::kernels

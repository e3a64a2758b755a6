// Kernels of model_ops.h: row copies (embedding, gather), RMSNorm with bf16 output, f32 -> bf16.
// Written for clarity first: these ops move a few rows per token and are far from the GEMMs in cost.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "backend/cuda/model_ops.h"

namespace k2::cuda::kernels {

inline constexpr int kRowCopyThreads = 128;  // embedding / gather: one block per output row
// rms_norm: one block per token, with the per-thread chunking and the reduction order of rms_norm_quant_kernel
// (kernels/fp8_quant.cuh), so that both norms sum the squares in the same order.
inline constexpr int kNormThreads = 128;
inline constexpr int kConvertThreads = 256;

__device__ __forceinline__ float bf16_bits_to_float(uint16_t bits) {
    return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

__device__ __forceinline__ uint16_t float_to_bf16_bits(float f) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

// grid: [num_rows], block: kRowCopyThreads. out[row, :] = src[ids[row], :], or a zero row when the id is outside
// [0, num_src) (num_src < 0: only negative ids are out of range). vec8: 16-byte copies (width % 8 == 0 and
// 16-byte aligned rows), otherwise element by element.
__global__ void __launch_bounds__(kRowCopyThreads)
    copy_rows_kernel(const uint16_t* src, const int32_t* ids, uint16_t* out, int64_t width, int64_t num_src,
                     bool vec8) {
    const int64_t row = blockIdx.x;
    const int64_t id = ids[row];
    const bool valid = id >= 0 && (num_src < 0 || id < num_src);
    const uint16_t* src_row = valid ? src + id * width : nullptr;  // [width]
    uint16_t* out_row = out + row * width;                          // [width]
    if (vec8) {
        const int64_t num_vecs = width / 8;
        for (int64_t v = threadIdx.x; v < num_vecs; v += kRowCopyThreads) {
            reinterpret_cast<uint4*>(out_row)[v] =
                valid ? reinterpret_cast<const uint4*>(src_row)[v] : make_uint4(0u, 0u, 0u, 0u);
        }
    } else {
        for (int64_t i = threadIdx.x; i < width; i += kRowCopyThreads) {
            out_row[i] = valid ? src_row[i] : uint16_t{0};
        }
    }
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

// grid: [num_tokens], block: kNormThreads. Thread t owns chunks t, t + kNormThreads, ... in both passes, so the
// residual it writes in pass 1 is read back by the same thread, and an in-place out == x is read before written.
// Numerics of rms_norm_quant_kernel: residual sum rounded to bf16 before the statistics, fp32 sum of squares
// (per-thread in chunk order, warp xor-shuffle, then the warps in order), rsqrtf(mean + eps), v * inv_rms * w in
// fp32, rounded once to bf16.
__global__ void __launch_bounds__(kNormThreads) rms_norm_kernel(const __grid_constant__ RmsNormParams p, bool vec8) {
    const int64_t token = blockIdx.x;
    const int64_t num_chunks = (p.hidden + 7) / 8;
    const uint16_t* x_row = p.x + token * p.x_stride;                                     // [hidden]
    uint16_t* res_row = p.residual != nullptr ? p.residual + token * p.hidden : nullptr;  // [hidden]
    uint16_t* out_row = p.out + token * p.out_stride;                                     // [hidden]
    float sum_sq = 0.0f;
    for (int64_t c = threadIdx.x; c < num_chunks; c += kNormThreads) {
        float v[8];
        load_chunk(x_row, c, p.hidden, vec8, v);
        if (res_row != nullptr) {
            float r[8];
            load_chunk(res_row, c, p.hidden, vec8, r);
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                v[e] = bf16_bits_to_float(float_to_bf16_bits(v[e] + r[e]));  // normalize what the residual stores
            }
            store_chunk(res_row, c, p.hidden, vec8, v);
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            sum_sq += v[e] * v[e];
        }
    }
    __shared__ float warp_sums[kNormThreads / 32];
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
    for (int w = 0; w < kNormThreads / 32; ++w) {
        total += warp_sums[w];
    }
    const float inv_rms = rsqrtf(total / static_cast<float>(p.hidden) + p.eps);
    const uint16_t* in_row = res_row != nullptr ? res_row : x_row;  // the values normalized in pass 1
    for (int64_t c = threadIdx.x; c < num_chunks; c += kNormThreads) {
        float v[8];
        float w[8];
        load_chunk(in_row, c, p.hidden, vec8, v);
        load_chunk(p.weight, c, p.hidden, vec8, w);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            v[e] = v[e] * inv_rms * w[e];
        }
        store_chunk(out_row, c, p.hidden, vec8, v);
    }
}

// grid-stride, block: kConvertThreads. Round to nearest even with NaN kept NaN (quieted), bit for bit
// k2::float_to_bf16 (src/core/dtype.h), so host and device conversions agree on every input.
__global__ void __launch_bounds__(kConvertThreads) f32_to_bf16_kernel(const __grid_constant__ F32ToBf16Params p) {
    const int64_t step = static_cast<int64_t>(gridDim.x) * kConvertThreads;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * kConvertThreads + threadIdx.x; i < p.count; i += step) {
        const uint32_t u = __float_as_uint(p.x[i]);
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            p.out[i] = static_cast<uint16_t>((u >> 16) | 0x40u);
        } else {
            p.out[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        }
    }
}

}  // namespace k2::cuda::kernels

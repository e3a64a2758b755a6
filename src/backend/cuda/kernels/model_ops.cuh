// Kernels of model_ops.h: row copies (embedding, gather) and f32 -> bf16 (RMSNorm is row_norm.cuh).
// Written for clarity first: these ops move a few rows per token and are far from the GEMMs in cost.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "backend/cuda/kernels/bf16_chunks.cuh"
#include "backend/cuda/model_ops.h"

namespace k2::cuda::kernels {

inline constexpr int kRowCopyThreads = 128;  // embedding / gather: one block per output row
inline constexpr int kConvertThreads = 256;

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

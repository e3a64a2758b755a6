// The one RMSNorm kernel behind launch_rms_norm (model_ops.h: bf16 out) and launch_rms_norm_quant (fp8_quant.h:
// e4m3 out, optionally the bf16 rows too). A row is one block. At decode the old 128-thread blocks serialized 7
// load round trips per thread (9-10 µs for 16 x 7168 under ncu); here a row's threads are as many as its
// 8-element chunks (up to 1024), so every load of a row is in flight at once and the row is read exactly once.
// Large batches go back to 128-thread blocks (row_norm_shape); the sums do not depend on the shape.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/kernels/bf16_chunks.cuh"

namespace k2::cuda::kernels {

inline constexpr int kNormMaxThreads = 1024;
inline constexpr int kNormMaxVecs = 8;  // chunks per thread: hidden <= 8 * 8 * 1024
inline constexpr int64_t kNormMaxHidden = int64_t{8} * kNormMaxVecs * kNormMaxThreads;
inline constexpr int kNormNarrowThreads = 128;  // the many-row shape's blocks (row_norm_shape)

// What both public ops need; the unused outputs are null.
struct RowNormArgs {
    const uint16_t* x = nullptr;       // [num_tokens, hidden] bf16, row stride x_stride
    uint16_t* residual = nullptr;      // [num_tokens, hidden] bf16 or null, row stride hidden
    const uint16_t* weight = nullptr;  // [hidden] bf16
    uint16_t* out_bf16 = nullptr;      // [num_tokens, hidden] bf16 or null, row stride out_bf16_stride
    uint8_t* out_q = nullptr;          // [num_tokens, hidden] e4m3 (kQuant), row stride out_q_stride
    float* out_scale = nullptr;        // [hidden / 128, scale_stride] f32 (kQuant)
    int64_t hidden = 0;
    int64_t x_stride = 0;
    int64_t out_bf16_stride = 0;
    int64_t out_q_stride = 0;
    int64_t scale_stride = 0;
    float eps = 1e-6f;
    bool vec8 = true;  // 16-byte chunks (hidden % 8 == 0, aligned rows); element-wise otherwise (never with kQuant)
};

// Chunk c of a bf16 row as its packed 16 bytes (elements at or past `hidden` read as 0; element-wise when !vec8).
__device__ __forceinline__ uint4 load_raw(const uint16_t* row, int64_t c, int64_t hidden, bool vec8) {
    if (vec8) {
        return reinterpret_cast<const uint4*>(row)[c];
    }
    uint32_t words[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int64_t e = c * 8 + 2 * i;
        const uint32_t lo = e < hidden ? row[e] : 0u;
        const uint32_t hi = e + 1 < hidden ? row[e + 1] : 0u;
        words[i] = lo | (hi << 16);
    }
    return make_uint4(words[0], words[1], words[2], words[3]);
}

// Stores the elements of packed chunk c that lie below `hidden`.
__device__ __forceinline__ void store_raw(uint16_t* row, int64_t c, int64_t hidden, bool vec8, const uint4& raw) {
    if (vec8) {
        reinterpret_cast<uint4*>(row)[c] = raw;
        return;
    }
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int64_t e = c * 8 + 2 * i;
        if (e < hidden) {
            row[e] = static_cast<uint16_t>(words[i] & 0xFFFFu);
        }
        if (e + 1 < hidden) {
            row[e + 1] = static_cast<uint16_t>(words[i] >> 16);
        }
    }
}

// Blocks per SM that the registers must allow: two 896-thread decode rows (<= 32 registers: up to 8192 wide the
// one-chunk blocks hold 2 per SM), eight 128-thread many-row blocks (<= 64), else one.
constexpr int row_norm_min_blocks(int vecs, int max_threads) {
    return max_threads == kNormNarrowThreads ? 8 : vecs == 1 ? 2 : 1;
}

// grid: [num_tokens], block: a multiple of 32, at most kMaxThreads, with kVecs * blockDim >= chunks.
// Thread t owns chunks t + i * blockDim (i < kVecs), kept packed in registers: all its loads (x, residual, and the
// weights when kEarlyWeight) are issued before any math, and each element is read before the same thread writes it
// (so out_bf16 == x in place is safe).
// Numerics (both ops, every block shape): residual sum rounded to bf16 and stored; the sum of squares in fp32 in an
// order fixed by hidden alone (each chunk's 8 squares in order; a 128-group's 16 chunks by a half-warp xor tree;
// then lane l adds groups l, l + 32, ... in order and a 32-lane xor tree sums the lanes), so the result is the same
// for any block shape and batch size; rsqrtf(mean + eps), v * inv_rms * w in fp32. out_bf16 gets that rounded once
// to bf16; kQuant quantizes the fp32 values, or the bf16-rounded ones when out_bf16 is set (then the codes equal
// rms_norm followed by fp8_quant bit for bit). A group's 16 chunks are 16 consecutive lanes (blockDim % 32 == 0);
// with kQuant, hidden % 128 == 0 makes every half-warp wholly in or out of range, as quantize_group8 needs.
template <int kVecs, bool kQuant, int kMaxThreads>
__global__ void __launch_bounds__(kMaxThreads, row_norm_min_blocks(kVecs, kMaxThreads))
    row_norm_kernel(const __grid_constant__ RowNormArgs a) {
    // Up to 2 chunks per thread the weights load with the row; past that after the reduction (fewer registers).
    constexpr bool kEarlyWeight = kVecs <= 2;
    // The many-row shape loads each residual chunk where it is added (as the old kernels did): 8 blocks of 128
    // threads per SM within 64 registers (holding 8 residual chunks too took 100 and 5 blocks: 1.3x slower at 1024
    // rows). Its many warps per SM hide the serial round trips.
    constexpr bool kEarlyResidual = kMaxThreads != kNormNarrowThreads;
    __shared__ float s_group[kNormMaxHidden / 128];  // [ceil(chunks / 16)] per-group sums of squares
    const int64_t token = blockIdx.x;
    const int threads = static_cast<int>(blockDim.x);
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int64_t num_chunks = (a.hidden + 7) / 8;
    const uint16_t* x_row = a.x + token * a.x_stride;                                     // [hidden]
    uint16_t* res_row = a.residual != nullptr ? a.residual + token * a.hidden : nullptr;  // [hidden]
    uint4 xv[kVecs];
    uint4 wv[kVecs];
    uint4 rv[kVecs];
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
        const int64_t c = threadIdx.x + static_cast<int64_t>(i) * threads;
        if (c < num_chunks) {
            xv[i] = load_raw(x_row, c, a.hidden, a.vec8);
            if constexpr (kEarlyWeight) {
                wv[i] = load_raw(a.weight, c, a.hidden, a.vec8);
            }
            if (kEarlyResidual && res_row != nullptr) {
                rv[i] = load_raw(res_row, c, a.hidden, a.vec8);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
        const int64_t c = threadIdx.x + static_cast<int64_t>(i) * threads;
        float part = 0.0f;
        if (c < num_chunks) {
            float v[8];
            bf16x8_to_float(xv[i], v);
            if (res_row != nullptr) {
                if constexpr (!kEarlyResidual) {
                    rv[i] = load_raw(res_row, c, a.hidden, a.vec8);
                }
                float r[8];
                bf16x8_to_float(rv[i], r);
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    v[e] += r[e];
                }
                xv[i] = float_to_bf16x8(v);  // normalize the bf16-rounded sum, as the stored residual holds it
                store_raw(res_row, c, a.hidden, a.vec8, xv[i]);
                bf16x8_to_float(xv[i], v);
            }
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                part += v[e] * v[e];
            }
        }
#pragma unroll
        for (int offset = 8; offset > 0; offset >>= 1) {  // the group's 16 lanes (every lane takes part)
            part += __shfl_xor_sync(0xffffffffu, part, offset);
        }
        if (lane % 16 == 0 && c < num_chunks) {
            s_group[c / 16] = part;
        }
    }
    __syncthreads();
    const int num_groups = static_cast<int>((num_chunks + 15) / 16);
    float total = 0.0f;
    for (int g = lane; g < num_groups; g += 32) {
        total += s_group[g];
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        total += __shfl_xor_sync(0xffffffffu, total, offset);
    }
    const float inv_rms = rsqrtf(total / static_cast<float>(a.hidden) + a.eps);
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
        const int64_t c = threadIdx.x + static_cast<int64_t>(i) * threads;
        if (c < num_chunks) {
            if constexpr (!kEarlyWeight) {
                wv[i] = load_raw(a.weight, c, a.hidden, a.vec8);
            }
            float v[8];
            float w[8];
            bf16x8_to_float(xv[i], v);
            bf16x8_to_float(wv[i], w);
            float y[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                y[e] = v[e] * inv_rms * w[e];
            }
            if (a.out_bf16 != nullptr) {
                store_chunk(a.out_bf16 + token * a.out_bf16_stride, c, a.hidden, a.vec8, y);
                if constexpr (kQuant) {
#pragma unroll
                    for (int e = 0; e < 8; ++e) {
                        y[e] = bf16_bits_to_float(float_to_bf16_bits(y[e]));  // quantize what the bf16 rows hold
                    }
                }
            }
            if constexpr (kQuant) {
                float scale;
                const uint2 q = quantize_group8(y, scale);
                *reinterpret_cast<uint2*>(a.out_q + token * a.out_q_stride + c * 8) = q;
                if (threadIdx.x % 16 == 0) {
                    a.out_scale[(c / 16) * a.scale_stride + token] = scale;
                }
            }
        }
    }
}

// Batches of more than this many rows take the many-row shape (below): at one chunk per thread a 7168-wide row is
// an 896-thread block, one per SM, so past ~3 waves of 132 rows the few loads in flight per SM lose to 128-thread
// blocks that keep 8 chunks each in flight (one chunk per thread measured 1.7x faster at 256 rows, 1.5x slower at
// 8192 when it ran one block per SM).
inline constexpr int64_t kNormFewRows = 384;

// The block shape of a batch. Decode (few rows): one chunk per thread up to 8192 wide (all of a row's loads in
// flight at once), then 2, 4, 8 chunks of up to 1024-thread blocks. Many rows of 1024 < hidden <= 8192: 128-thread
// blocks with 2, 4 or 8 chunks each (the old kernels' shape). The numerics do not depend on the shape.
struct RowNormShape {
    int threads = 32;
    int vecs = 1;
    bool narrow = false;  // the 128-thread many-row shape at 8 chunks per thread (its own instantiation)
};

inline RowNormShape row_norm_shape(int64_t hidden, int64_t num_rows) {
    const int64_t num_chunks = (hidden + 7) / 8;
    RowNormShape s;
    const int64_t max_threads =
        num_rows > kNormFewRows && num_chunks > 128 && num_chunks <= 1024 ? kNormNarrowThreads : kNormMaxThreads;
    while (s.vecs < kNormMaxVecs && num_chunks > s.vecs * max_threads) {
        s.vecs *= 2;
    }
    const int64_t per_vec = (num_chunks + s.vecs - 1) / s.vecs;
    s.threads = static_cast<int>((per_vec + 31) / 32 * 32);
    s.narrow = max_threads == kNormNarrowThreads && s.vecs == kNormMaxVecs;
    return s;
}

template <bool kQuant>
cudaError_t launch_row_norm(const RowNormArgs& a, int64_t num_tokens, cudaStream_t stream) {
    const RowNormShape s = row_norm_shape(a.hidden, num_tokens);
    const auto grid = static_cast<unsigned>(num_tokens);
    if (s.narrow) {
        row_norm_kernel<kNormMaxVecs, kQuant, kNormNarrowThreads><<<grid, s.threads, 0, stream>>>(a);
        return cudaGetLastError();
    }
    switch (s.vecs) {
    case 1:
        row_norm_kernel<1, kQuant, kNormMaxThreads><<<grid, s.threads, 0, stream>>>(a);
        break;
    case 2:
        row_norm_kernel<2, kQuant, kNormMaxThreads><<<grid, s.threads, 0, stream>>>(a);
        break;
    case 4:
        row_norm_kernel<4, kQuant, kNormMaxThreads><<<grid, s.threads, 0, stream>>>(a);
        break;
    default:
        row_norm_kernel<kNormMaxVecs, kQuant, kNormMaxThreads><<<grid, s.threads, 0, stream>>>(a);
        break;
    }
    return cudaGetLastError();
}

}  // namespace k2::cuda::kernels

// The small decode ops' kernels as they were before bench/small_ops.sh's changes (git 8b93114), copied verbatim
// into namespace k2::cuda::before: test_small_ops times them next to the current kernels in the same run, and
// checks that the current ones give the same bits where the op is exact (router, gather, combine, scale layout).
// Test-only code; nothing in src/ uses it.
#include "small_ops_before.h"

// ---- src/backend/cuda/kernels/model_ops.cuh
// Kernels of model_ops.h: row copies (embedding, gather), RMSNorm with bf16 output, f32 -> bf16.
// Written for clarity first: these ops move a few rows per token and are far from the GEMMs in cost.

#include <cuda_bf16.h>

#include <cstdint>

#include "backend/cuda/model_ops.h"

namespace k2::cuda::before {

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

}  // namespace k2::cuda::before
// ---- src/backend/cuda/kernels/fp8_quant.cuh
// Kernels of fp8_quant.h. Each thread owns 8 consecutive channels (one 16-byte bf16 load); the 16 lanes of a
// half-warp own one 128-channel group, so a group's amax is 4 shuffles and no shared memory.

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "backend/cuda/fp8_quant.h"

namespace k2::cuda::before {

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

}  // namespace k2::cuda::before
// ---- src/backend/cuda/kernels/moe_router.cuh
// Kernel of moe_router.h: one warp per token; expert e lives in lane e % 32, slot e / 32.

#include <cmath>

#include "backend/cuda/moe_router.h"

namespace k2::cuda::before {

inline constexpr int kRouterWarps = 4;
inline constexpr int kRouterSlots = kRouterMaxExperts / 32;

// (value, id) ordering of the selection: larger value first, then the lower id.
__device__ __forceinline__ bool router_better(float v, int id, float best_v, int best_id) {
    return v > best_v || (v == best_v && id < best_id);
}

// grid: ceil(num_tokens / kRouterWarps), block: 32 * kRouterWarps.
__global__ void __launch_bounds__(32 * kRouterWarps) moe_router_kernel(const __grid_constant__ MoeRouterParams p) {
    const int lane = threadIdx.x % 32;
    const int64_t token = static_cast<int64_t>(blockIdx.x) * kRouterWarps + threadIdx.x / 32;
    if (token >= p.num_tokens) {
        return;  // whole warps only: the shuffles below never miss a lane
    }
    const int slots = (p.num_experts + 31) / 32;  // expert lane + 32 i exists while it is < num_experts
    auto valid = [&](int i) { return i < slots && lane + 32 * i < p.num_experts; };
    const int group_size = p.num_experts / p.n_group;
    float score[kRouterSlots];
    float choice[kRouterSlots];
#pragma unroll
    for (int i = 0; i < kRouterSlots; ++i) {
        score[i] = 0.0f;
        choice[i] = -INFINITY;
        if (valid(i)) {
            const int e = lane + 32 * i;
            const float logit = p.logits[token * p.num_experts + e];
            score[i] = 1.0f / (1.0f + expf(-logit));
            choice[i] = score[i] + (p.bias != nullptr ? p.bias[e] : 0.0f);
        }
    }
    // Group scores (sum of each group's top-2 choices); lane g keeps group g's score.
    if (p.n_group > 1) {
        float my_group_score = -INFINITY;
        for (int g = 0; g < p.n_group; ++g) {
            float top1 = -INFINITY;
            float top2 = -INFINITY;
#pragma unroll
            for (int i = 0; i < kRouterSlots; ++i) {
                if (valid(i) && (lane + 32 * i) / group_size == g) {
                    const float v = choice[i];
                    top2 = v > top1 ? top1 : fmaxf(top2, v);
                    top1 = fmaxf(top1, v);
                }
            }
#pragma unroll
            for (int offset = 16; offset > 0; offset >>= 1) {
                const float o1 = __shfl_xor_sync(0xffffffffu, top1, offset);
                const float o2 = __shfl_xor_sync(0xffffffffu, top2, offset);
                const float hi = fmaxf(top1, o1);
                const float lo = fmaxf(fminf(top1, o1), fmaxf(top2, o2));
                top1 = hi;
                top2 = lo;
            }
            if (lane == g) {
                my_group_score = top1 + top2;
            }
        }
        // The topk_group best groups (ties: the lower group id) as a bit mask.
        uint32_t kept = 0;
        for (int r = 0; r < p.topk_group; ++r) {
            float best_v = (kept >> lane) & 1u ? -INFINITY : my_group_score;
            int best_id = lane < p.n_group && !((kept >> lane) & 1u) ? lane : 1 << 30;
#pragma unroll
            for (int offset = 16; offset > 0; offset >>= 1) {
                const float ov = __shfl_xor_sync(0xffffffffu, best_v, offset);
                const int oid = __shfl_xor_sync(0xffffffffu, best_id, offset);
                if (router_better(ov, oid, best_v, best_id)) {
                    best_v = ov;
                    best_id = oid;
                }
            }
            kept |= 1u << best_id;
        }
#pragma unroll
        for (int i = 0; i < kRouterSlots; ++i) {
            if (valid(i) && !((kept >> ((lane + 32 * i) / group_size)) & 1u)) {
                choice[i] = 0.0f;
            }
        }
    }
    // top_k rounds of a warp argmax; the winner's slot is retired with -inf.
    float weight_sum = 0.0f;
    float my_weight = 0.0f;  // lane r holds the r-th selection
    int my_id = 0;
    for (int r = 0; r < p.top_k; ++r) {
        float best_v = -INFINITY;
        int best_id = 1 << 30;
        float best_s = 0.0f;
#pragma unroll
        for (int i = 0; i < kRouterSlots; ++i) {
            if (valid(i) && router_better(choice[i], lane + 32 * i, best_v, best_id)) {
                best_v = choice[i];
                best_id = lane + 32 * i;
                best_s = score[i];
            }
        }
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, best_v, offset);
            const int oid = __shfl_xor_sync(0xffffffffu, best_id, offset);
            const float os = __shfl_xor_sync(0xffffffffu, best_s, offset);
            if (router_better(ov, oid, best_v, best_id)) {
                best_v = ov;
                best_id = oid;
                best_s = os;
            }
        }
#pragma unroll
        for (int i = 0; i < kRouterSlots; ++i) {
            if (lane + 32 * i == best_id) {
                choice[i] = -INFINITY;
            }
        }
        weight_sum += best_s;
        if (lane == r) {
            my_weight = best_s;
            my_id = best_id;
        }
    }
    if (lane < p.top_k) {
        const float norm = p.norm_topk_prob ? 1.0f / (weight_sum + 1e-20f) : 1.0f;
        p.topk_ids[token * p.top_k + lane] = my_id;
        p.topk_weights[token * p.top_k + lane] = my_weight * norm * p.routed_scaling_factor;
    }
}

}  // namespace k2::cuda::before
// ---- src/backend/cuda/kernels/moe_ops.cuh
// Kernels of moe_ops.h's data movement: permute (stable counting sort by expert), gather (quantized rows and
// expert-blocked scales into expert order) and combine (weighted sum back per token). The grouped GEMM is in
// fp8_grouped_gemm.cuh.

#include <cuda_bf16.h>

#include "backend/cuda/moe_ops.h"
#include "backend/cuda/moe_ops_detail.h"

namespace k2::cuda::before {

inline constexpr int kPermuteWarps = 16;
inline constexpr int kPermuteThreads = kPermuteWarps * 32;
static_assert(kPermuteThreads >= detail::kMoeMaxExperts, "phase 2 gives every expert its own thread");

inline constexpr int kGatherThreads = 128;
inline constexpr int kCombineThreads = 256;
inline constexpr int kCombineVec = 8;  // bf16 per thread: one 16-byte load per expert row

// Steps of 32 pairs whose ids one warp loads together: hides the global load latency of the serial walk.
inline constexpr int kPermuteBatch = 8;

// Local expert of pair i of this warp's segment, or -1 past the segment's end or for an id outside this rank's
// [expert_begin, + num_experts) (such a pair gets no row: pair_row -1, offsets[num_experts] counts valid pairs).
__device__ __forceinline__ int permute_expert(const MoePermuteParams& p, int i, int seg_end) {
    if (i >= seg_end) {
        return -1;
    }
    const int e = p.topk_ids[i] - p.expert_begin;
    return e >= 0 && e < p.num_experts ? e : -1;
}

// Walks this warp's segment [seg_begin, seg_end) in order, 32 pairs per step. cursor: this warp's row [num_experts]
// of per-expert counts. kWrite false: counts only. kWrite true: pair i of expert e gets row
// base[e] + cursor[e] + (its rank among the step's lanes of e, by lane), then the cursor moves past the step.
// One leader per expert present in a step updates the cursor (distinct experts: no write conflict).
template <bool kWrite>
__device__ __forceinline__ void permute_walk(const MoePermuteParams& p, int seg_begin, int seg_end, int* cursor,
                                             const int* base, int lane) {
    const unsigned lanes_before = (1u << lane) - 1u;
    for (int batch = seg_begin; batch < seg_end; batch += 32 * kPermuteBatch) {
        int experts[kPermuteBatch];
#pragma unroll
        for (int s = 0; s < kPermuteBatch; ++s) {
            experts[s] = permute_expert(p, batch + s * 32 + lane, seg_end);
        }
#pragma unroll
        for (int s = 0; s < kPermuteBatch; ++s) {
            const int i = batch + s * 32 + lane;
            const int e = experts[s];
            const unsigned same = __match_any_sync(0xffffffffu, e);
            if constexpr (kWrite) {
                if (e >= 0) {
                    const int row = base[e] + cursor[e] + __popc(same & lanes_before);
                    p.row_token[row] = i / p.top_k;
                    p.pair_row[i] = row;
                } else if (i < seg_end) {
                    p.pair_row[i] = -1;
                }
                __syncwarp();  // every lane has read its cursor before the leader moves it
            }
            if (e >= 0 && lane == __ffs(same) - 1) {
                cursor[e] += __popc(same);
            }
            __syncwarp();
        }
    }
}

// grid: 1, block: kPermuteThreads. Warp w owns the contiguous pair segment w; the segments are in pair order, so
// expert e's rows are: offsets[e], then every earlier warp's count of e, then the rank inside this warp's walk.
// Stable and deterministic: no atomics anywhere. Shared memory: 16 x 512 x 4 = 32 KiB of per-(warp, expert) counts.
__global__ void __launch_bounds__(kPermuteThreads) moe_permute_kernel(const __grid_constant__ MoePermuteParams p) {
    __shared__ int s_count[kPermuteWarps][detail::kMoeMaxExperts];  // phase 1: counts; phase 2 on: warp cursors
    __shared__ int s_offset[detail::kMoeMaxExperts];
    __shared__ int s_warp_total[kPermuteWarps];
    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int num_pairs = static_cast<int>(p.num_tokens * p.top_k);
    const int seg = (num_pairs + kPermuteWarps - 1) / kPermuteWarps;
    const int seg_begin = min(num_pairs, warp * seg);
    const int seg_end = min(num_pairs, seg_begin + seg);

    for (int i = static_cast<int>(threadIdx.x); i < kPermuteWarps * detail::kMoeMaxExperts; i += kPermuteThreads) {
        (&s_count[0][0])[i] = 0;
    }
    __syncthreads();
    permute_walk<false>(p, seg_begin, seg_end, s_count[warp], nullptr, lane);  // phase 1: per-warp counts
    __syncthreads();

    // Phase 2: thread e turns its column of counts into per-warp cursors, then a block-wide exclusive scan of the
    // expert totals gives the offsets.
    const int e = static_cast<int>(threadIdx.x);
    int total = 0;
    if (e < p.num_experts) {
        for (int w = 0; w < kPermuteWarps; ++w) {
            const int c = s_count[w][e];
            s_count[w][e] = total;
            total += c;
        }
    }
    int inclusive = total;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, inclusive, d);
        if (lane >= d) {
            inclusive += v;
        }
    }
    if (lane == 31) {
        s_warp_total[warp] = inclusive;
    }
    __syncthreads();
    int warp_base = 0;
    for (int w = 0; w < warp; ++w) {
        warp_base += s_warp_total[w];
    }
    const int exclusive = warp_base + inclusive - total;
    if (e < p.num_experts) {
        s_offset[e] = exclusive;
        p.offsets[e] = exclusive;
    }
    if (e == p.num_experts - 1) {
        p.offsets[p.num_experts] = exclusive + total;
    }
    __syncthreads();
    permute_walk<true>(p, seg_begin, seg_end, s_count[warp], s_offset, lane);  // phase 3: rows
}

// grid: [P], block: kGatherThreads. Block r copies permuted row r (16 bytes per thread and step) and scatters its
// k / 128 scales into its expert's [k / 128, n_e] block. Rows past offsets[num_experts] (pairs with invalid ids)
// have no source and are left alone.
__global__ void __launch_bounds__(kGatherThreads) moe_gather_kernel(const __grid_constant__ MoeGatherParams p) {
    const int row = static_cast<int>(blockIdx.x);
    if (row >= p.offsets[p.num_experts]) {
        return;
    }
    // The row's expert: the largest e with offsets[e] <= row (empty experts before it share its offset).
    int lo = 0;
    int hi = p.num_experts - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (p.offsets[mid] <= row) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    const int64_t begin = p.offsets[lo];
    const int64_t rows_e = p.offsets[lo + 1] - begin;
    const int64_t token = p.row_token[row];
    const uint4* src = reinterpret_cast<const uint4*>(p.x + token * p.k);
    uint4* dst = reinterpret_cast<uint4*>(p.out + static_cast<int64_t>(row) * p.k);
    for (int64_t i = threadIdx.x; i < p.k / 16; i += kGatherThreads) {
        dst[i] = src[i];
    }
    const int64_t num_kb = p.k / 128;
    float* scale = p.out_scale + begin * num_kb + (row - begin);
    for (int64_t kb = threadIdx.x; kb < num_kb; kb += kGatherThreads) {
        scale[kb * rows_e] = p.x_scale[kb * p.x_scale_stride + token];
    }
}

__device__ __forceinline__ void add_bf16x8(float (&acc)[kCombineVec], const uint4& v, float weight) {
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        acc[2 * i] += weight * __uint_as_float(words[i] << 16);
        acc[2 * i + 1] += weight * __uint_as_float(words[i] & 0xFFFF0000u);
    }
}

// grid: [num_tokens, ceil(hidden / (kCombineVec * kCombineThreads))], block: kCombineThreads; each thread owns 8
// consecutive columns of one token. Sum in k order, shared expert last, one bf16 rounding.
__global__ void __launch_bounds__(kCombineThreads) moe_combine_kernel(const __grid_constant__ MoeCombineParams p) {
    const int64_t token = blockIdx.x;
    const int64_t col = (static_cast<int64_t>(blockIdx.y) * kCombineThreads + threadIdx.x) * kCombineVec;
    if (col >= p.hidden) {
        return;
    }
    float acc[kCombineVec] = {};
    for (int j = 0; j < p.top_k; ++j) {
        const int64_t row = p.pair_row[token * p.top_k + j];
        if (row < 0) {
            continue;  // a pair the permute gave no row (invalid expert id)
        }
        const float weight = p.topk_weights[token * p.top_k + j];
        add_bf16x8(acc, *reinterpret_cast<const uint4*>(p.y + row * p.hidden + col), weight);
    }
    if (p.shared != nullptr) {
        add_bf16x8(acc, *reinterpret_cast<const uint4*>(p.shared + token * p.hidden + col), 1.0f);
    }
    uint32_t words[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const __nv_bfloat16 lo = __float2bfloat16(acc[2 * i]);
        const __nv_bfloat16 hi = __float2bfloat16(acc[2 * i + 1]);
        words[i] = static_cast<uint32_t>(reinterpret_cast<const uint16_t&>(lo)) |
                   (static_cast<uint32_t>(reinterpret_cast<const uint16_t&>(hi)) << 16);
    }
    *reinterpret_cast<uint4*>(p.out + token * p.hidden + col) = make_uint4(words[0], words[1], words[2], words[3]);
}

}  // namespace k2::cuda::before
// ---- src/backend/cuda/moe_layout.cu
namespace k2::cuda::before {
__global__ void moe_scales_to_expert_blocked_kernel(const MoeScaleLayoutParams p) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= p.num_rows * p.num_groups) {
        return;
    }
    const int64_t g = i / p.num_rows;
    const int64_t r = i % p.num_rows;
    if (r >= p.offsets[p.num_experts]) {
        return;
    }
    int lo = 0;  // last expert whose offset is <= r
    int hi = p.num_experts - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (p.offsets[mid] <= r) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    const int64_t begin = p.offsets[lo];
    const int64_t rows = p.offsets[lo + 1] - begin;
    p.out[begin * p.num_groups + g * rows + (r - begin)] = p.scale[g * p.num_rows + r];
}
}  // namespace k2::cuda::before

// ---- the launches, as the .cu files of git 8b93114 made them
namespace k2::cuda::before {

cudaError_t launch_rms_norm(const RmsNormParams& p, bool vec8, cudaStream_t stream) {
    rms_norm_kernel<<<static_cast<unsigned>(p.num_tokens), kNormThreads, 0, stream>>>(p, vec8);
    return cudaGetLastError();
}

cudaError_t launch_rms_norm_quant(const RmsNormQuantParams& p, cudaStream_t stream) {
    rms_norm_quant_kernel<<<static_cast<unsigned>(p.num_tokens), kQuantThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

cudaError_t launch_moe_router(const MoeRouterParams& p, cudaStream_t stream) {
    const auto blocks = static_cast<unsigned>((p.num_tokens + kRouterWarps - 1) / kRouterWarps);
    moe_router_kernel<<<blocks, 32 * kRouterWarps, 0, stream>>>(p);
    return cudaGetLastError();
}

cudaError_t launch_moe_permute(const MoePermuteParams& p, cudaStream_t stream) {
    moe_permute_kernel<<<1, kPermuteThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

cudaError_t launch_moe_gather(const MoeGatherParams& p, cudaStream_t stream) {
    moe_gather_kernel<<<static_cast<unsigned>(p.num_rows), kGatherThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

cudaError_t launch_moe_combine(const MoeCombineParams& p, cudaStream_t stream) {
    constexpr int64_t kColsPerBlock = kCombineThreads * kCombineVec;
    const auto col_blocks = static_cast<unsigned>((p.hidden + kColsPerBlock - 1) / kColsPerBlock);
    const dim3 grid(static_cast<unsigned>(p.num_tokens), col_blocks, 1);
    moe_combine_kernel<<<grid, kCombineThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

cudaError_t launch_moe_scales_to_expert_blocked(const MoeScaleLayoutParams& p, cudaStream_t stream) {
    const int64_t count = p.num_rows * p.num_groups;
    moe_scales_to_expert_blocked_kernel<<<static_cast<unsigned>((count + 255) / 256), 256, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace k2::cuda::before

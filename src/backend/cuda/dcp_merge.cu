// The kernel of dcp_merge.h: one CTA per (token, head), threads over the latent dims in bf16 pairs. The partials'
// weights live in registers (num_partials <= kDcpMaxPartials).
#include <cuda_bf16.h>

#include <cmath>

#include "backend/cuda/dcp_merge.h"

namespace k2::cuda {

namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ float sanitize_lse(float lse) {
    return isnan(lse) || lse == INFINITY ? -INFINITY : lse;
}

__global__ void __launch_bounds__(kThreads) dcp_merge_kernel(const DcpMergeParams p) {
    const int64_t t = blockIdx.x / p.heads;
    const int h = static_cast<int>(blockIdx.x % p.heads);
    const int group_heads = p.dcp * p.heads;
    const int head = p.rank * p.heads + h;  // in the group's head order
    float lse[kDcpMaxPartials];
    float max_lse = -INFINITY;
    for (int d = 0; d < p.num_partials; ++d) {
        lse[d] = sanitize_lse(p.lses[(d * p.num_tokens + t) * group_heads + head]);
        max_lse = fmaxf(max_lse, lse[d]);
    }
    float weight[kDcpMaxPartials];
    float sum = 0.0f;
    for (int d = 0; d < p.num_partials; ++d) {
        weight[d] = max_lse == -INFINITY ? 0.0f : expf(lse[d] - max_lse);
        sum += weight[d];
    }
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // exp(lse_d - L) = weight_d / sum
    if (p.lse_out != nullptr && threadIdx.x == 0) {
        p.lse_out[t * p.heads + h] = sum > 0.0f ? max_lse + logf(sum) : -INFINITY;
    }
    __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(p.out + (t * p.heads + h) * p.lat);
    for (int i = static_cast<int>(threadIdx.x); i < p.lat / 2; i += kThreads) {
        float2 acc = make_float2(0.0f, 0.0f);
        for (int d = 0; d < p.num_partials; ++d) {
            if (weight[d] == 0.0f) {
                continue;  // a partial with no token for this head: its zeros (or anything) do not count
            }
            const auto* src = reinterpret_cast<const __nv_bfloat162*>(
                p.outs + ((d * p.num_tokens + t) * group_heads + head) * static_cast<int64_t>(p.lat));
            const float2 v = __bfloat1622float2(src[i]);
            acc.x += weight[d] * inv * v.x;
            acc.y += weight[d] * inv * v.y;
        }
        dst[i] = __floats2bfloat162_rn(acc.x, acc.y);
    }
}

}  // namespace

namespace detail {

cudaError_t launch_dcp_merge_kernel(const DcpMergeParams& p, cudaStream_t stream) {
    dcp_merge_kernel<<<static_cast<unsigned>(p.num_tokens * p.heads), kThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace detail

}  // namespace k2::cuda

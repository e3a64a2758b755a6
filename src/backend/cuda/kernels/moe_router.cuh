// Kernel of moe_router.h: one warp per token; expert e lives in lane e % 32, slot e / 32.
#pragma once

#include <cmath>

#include "backend/cuda/moe_router.h"

namespace k2::cuda::kernels {

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

}  // namespace k2::cuda::kernels

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

// An unsigned key with the order of the float values (-0.0 first made +0.0: the comparisons treat them as equal).
__device__ __forceinline__ unsigned router_order_key(float v) {
    const unsigned u = __float_as_uint(v + 0.0f);
    return (u & 0x80000000u) != 0u ? ~u : (u | 0x80000000u);
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
    // top_k rounds of a warp argmax; the winner's slot is retired with -inf. Each round takes the lane's best slot
    // as a tree (depth 4, not a chain of 16 dependent compares), the warp's best with two redux.sync (not 5 rounds
    // of 3 shuffles), and the winner's score from its lane afterwards. (value desc, id asc) is a total order and the
    // winner is always finite, so all of these pick the winner of the old chain.
    float weight_sum = 0.0f;
    float my_weight = 0.0f;  // lane r holds the r-th selection
    int my_id = 0;
    for (int r = 0; r < p.top_k; ++r) {
        float tv[kRouterSlots];
        int ti[kRouterSlots];
#pragma unroll
        for (int i = 0; i < kRouterSlots; ++i) {
            // Slots past num_experts hold -inf like retired ones: never the winner, since at least
            // num_experts - top_k + 1 finite choices remain in every round (top_k <= num_experts).
            tv[i] = choice[i];
            ti[i] = lane + 32 * i;
        }
#pragma unroll
        for (int step = 1; step < kRouterSlots; step *= 2) {
#pragma unroll
            for (int i = 0; i + step < kRouterSlots; i += 2 * step) {
                if (router_better(tv[i + step], ti[i + step], tv[i], ti[i])) {
                    tv[i] = tv[i + step];
                    ti[i] = ti[i + step];
                }
            }
        }
        // The warp's winner in two redux.sync steps: the largest value, then the lowest id among the lanes holding
        // it (each lane's best already has the lowest id of its own ties).
        const unsigned key = router_order_key(tv[0]);
        const unsigned best_key = __reduce_max_sync(0xffffffffu, key);
        const int best_id = __reduce_min_sync(0xffffffffu, key == best_key ? ti[0] : 1 << 30);
        float my_s = 0.0f;  // the winner's lane: its un-biased score
#pragma unroll
        for (int i = 0; i < kRouterSlots; ++i) {
            if (lane + 32 * i == best_id) {
                choice[i] = -INFINITY;
                my_s = score[i];
            }
        }
        const float best_s = __shfl_sync(0xffffffffu, my_s, best_id % 32);
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

#include "backend/cpu/moe_router.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"

namespace k2::cpu {

namespace {

// Indices of the k largest values (ties: lower index first), in descending order of value.
void top_k_indices(const float* v, int64_t n, int64_t k, std::vector<int32_t>& idx) {
    idx.resize(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [v](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
    idx.resize(static_cast<size_t>(k));
}

}  // namespace

void moe_route(const MoeRouterArgs& a) {
    const int64_t e = a.num_experts;
    K2_CHECK(a.n_group >= 1 && e % a.n_group == 0, "moe router: {} experts do not split into {} groups", e, a.n_group);
    K2_CHECK(a.topk_group >= 1 && a.topk_group <= a.n_group, "moe router: topk_group {} with {} groups", a.topk_group,
             a.n_group);
    const int64_t per_group = e / a.n_group;
    K2_CHECK(a.n_group == 1 || per_group >= 2, "moe router: groups need at least 2 experts for the top-2 score");
    K2_CHECK(a.top_k >= 1 && a.top_k <= a.topk_group * per_group, "moe router: top_k {} exceeds the {} selectable",
             a.top_k, a.topk_group * per_group);
#pragma omp parallel if (a.num_tokens * a.num_experts >= (int64_t{1} << 14))
    {
        std::vector<float> scores(static_cast<size_t>(e));  // [num_experts] sigmoid
        std::vector<float> choice(static_cast<size_t>(e));  // [num_experts] biased, group-masked
        std::vector<float> group_scores(static_cast<size_t>(a.n_group));
        std::vector<int32_t> idx;
        std::vector<int32_t> groups;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < a.num_tokens; ++t) {
            const float* logits = a.router_logits + t * e;
            for (int64_t i = 0; i < e; ++i) {
                scores[static_cast<size_t>(i)] = 1.0f / (1.0f + std::exp(-logits[i]));
                choice[static_cast<size_t>(i)] =
                    scores[static_cast<size_t>(i)] + (a.correction_bias != nullptr ? a.correction_bias[i] : 0.0f);
            }
            if (a.n_group > 1) {
                for (int64_t g = 0; g < a.n_group; ++g) {
                    top_k_indices(choice.data() + g * per_group, per_group, 2, idx);
                    group_scores[static_cast<size_t>(g)] = choice[static_cast<size_t>(g * per_group + idx[0])] +
                                                           choice[static_cast<size_t>(g * per_group + idx[1])];
                }
                top_k_indices(group_scores.data(), a.n_group, a.topk_group, groups);
                std::vector<bool> keep(static_cast<size_t>(a.n_group), false);
                for (const int32_t g : groups)
                    keep[static_cast<size_t>(g)] = true;
                for (int64_t i = 0; i < e; ++i) {
                    if (!keep[static_cast<size_t>(i / per_group)])
                        choice[static_cast<size_t>(i)] = 0.0f;
                }
            }
            top_k_indices(choice.data(), e, a.top_k, idx);
            float sum = 0.0f;
            for (int64_t k = 0; k < a.top_k; ++k)
                sum += scores[static_cast<size_t>(idx[static_cast<size_t>(k)])];
            const float denom = a.norm_topk_prob ? sum + 1e-20f : 1.0f;
            for (int64_t k = 0; k < a.top_k; ++k) {
                const int32_t id = idx[static_cast<size_t>(k)];
                a.topk_ids[t * a.top_k + k] = id;
                a.topk_weights[t * a.top_k + k] = scores[static_cast<size_t>(id)] / denom * a.routed_scaling_factor;
            }
        }
    }
}

}  // namespace k2::cpu

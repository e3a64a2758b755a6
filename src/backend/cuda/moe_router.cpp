#include "backend/cuda/moe_router.h"

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/launch_detail.h"

namespace k2::cuda {

void launch_moe_router(const MoeRouterParams& p, cudaStream_t stream) {
    if (p.num_tokens == 0) {
        return;
    }
    K2_CHECK(p.num_experts > 0 && p.num_experts <= kRouterMaxExperts, "moe router: num_experts {} not in [1, {}]",
             p.num_experts, kRouterMaxExperts);
    K2_CHECK(p.n_group >= 1 && p.n_group <= 32 && p.num_experts % p.n_group == 0,
             "moe router: n_group {} must divide num_experts {} (at most 32 groups)", p.n_group, p.num_experts);
    K2_CHECK(p.topk_group >= 1 && p.topk_group <= p.n_group, "moe router: topk_group {} not in [1, n_group {}]",
             p.topk_group, p.n_group);
    K2_CHECK(p.top_k >= 1 && p.top_k <= kRouterMaxTopK && p.top_k <= p.num_experts / p.n_group * p.topk_group,
             "moe router: top_k {} out of range", p.top_k);
    K2_CHECK(p.logits != nullptr && p.topk_ids != nullptr && p.topk_weights != nullptr, "moe router: null pointer");
    CUDA_CHECK(detail::launch_moe_router_kernel(p, stream));
}

}  // namespace k2::cuda

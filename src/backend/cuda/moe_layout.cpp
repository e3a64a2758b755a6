#include "backend/cuda/moe_layout.h"

#include "backend/cuda/cuda_check.h"

namespace k2::cuda {

namespace detail {
cudaError_t launch_moe_scales_to_expert_blocked_kernel(const MoeScaleLayoutParams& params, cudaStream_t stream);
}  // namespace detail

void launch_moe_scales_to_expert_blocked(const MoeScaleLayoutParams& p, cudaStream_t stream) {
    if (p.num_rows == 0 || p.num_groups == 0) {
        return;
    }
    K2_CHECK(p.num_rows > 0 && p.num_groups > 0 && p.num_experts > 0,
             "moe scale layout: bad sizes (rows {}, groups {}, experts {})", p.num_rows, p.num_groups, p.num_experts);
    K2_CHECK(p.num_experts <= 512, "moe scale layout: num_experts {} > 512 (the kernel's shared offsets)",
             p.num_experts);
    K2_CHECK(p.scale != nullptr && p.offsets != nullptr && p.out != nullptr, "moe scale layout: null pointer");
    CUDA_CHECK(detail::launch_moe_scales_to_expert_blocked_kernel(p, stream));
}

}  // namespace k2::cuda

#include "backend/cuda/dcp_merge.h"

#include "backend/cuda/cuda_check.h"

namespace k2::cuda {

namespace detail {
cudaError_t launch_dcp_merge_kernel(const DcpMergeParams& params, cudaStream_t stream);
}  // namespace detail

void launch_dcp_merge(const DcpMergeParams& params, cudaStream_t stream) {
    if (params.num_tokens == 0) {
        return;
    }
    DcpMergeParams p = params;
    p.num_partials = p.num_partials == 0 ? p.dcp : p.num_partials;
    K2_CHECK(p.num_partials >= p.dcp && p.num_partials <= kDcpMaxPartials,
             "dcp merge: {} partials for dcp {} (at most {})", p.num_partials, p.dcp, kDcpMaxPartials);
    K2_CHECK(p.num_tokens > 0 && p.heads > 0 && p.num_tokens * p.heads <= INT32_MAX,
             "dcp merge: bad sizes ({} tokens x {} heads)", p.num_tokens, p.heads);
    K2_CHECK(p.dcp >= 1 && p.rank >= 0 && p.rank < p.dcp, "dcp merge: rank {} of {}", p.rank, p.dcp);
    K2_CHECK(p.lat > 0 && p.lat % 2 == 0, "dcp merge: lat {} must be even and positive", p.lat);
    K2_CHECK(p.outs != nullptr && p.lses != nullptr && p.out != nullptr, "dcp merge: null pointer");
    CUDA_CHECK(detail::launch_dcp_merge_kernel(p, stream));
}

}  // namespace k2::cuda

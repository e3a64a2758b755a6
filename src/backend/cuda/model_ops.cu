// Raw launches of the model_ops kernels (validation is in model_ops.cpp).
#include <algorithm>

#include "backend/cuda/kernels/model_ops.cuh"
#include "backend/cuda/kernels/row_norm.cuh"
#include "backend/cuda/model_ops_detail.h"

namespace k2::cuda::detail {

static_assert(kernels::kNormMaxHidden == 65536, "the hidden bound that the launchers check");

cudaError_t launch_embedding_kernel(const EmbeddingParams& p, bool vec8, cudaStream_t stream) {
    kernels::copy_rows_kernel<<<static_cast<unsigned>(p.num_tokens), kernels::kRowCopyThreads, 0, stream>>>(
        p.table, p.token_ids, p.out, p.hidden, p.vocab, vec8);
    return cudaGetLastError();
}

cudaError_t launch_gather_rows_kernel(const GatherRowsParams& p, bool vec8, cudaStream_t stream) {
    kernels::copy_rows_kernel<<<static_cast<unsigned>(p.num_rows), kernels::kRowCopyThreads, 0, stream>>>(
        p.x, p.rows, p.out, p.width, -1, vec8);
    return cudaGetLastError();
}

cudaError_t launch_rms_norm_kernel(const RmsNormParams& p, bool vec8, cudaStream_t stream) {
    kernels::RowNormArgs a;
    a.x = p.x;
    a.residual = p.residual;
    a.weight = p.weight;
    a.out_bf16 = p.out;
    a.hidden = p.hidden;
    a.x_stride = p.x_stride;
    a.out_bf16_stride = p.out_stride;
    a.eps = p.eps;
    a.vec8 = vec8;
    return kernels::launch_row_norm<false>(a, p.num_tokens, stream);
}

cudaError_t launch_f32_to_bf16_kernel(const F32ToBf16Params& p, cudaStream_t stream) {
    constexpr int64_t kMaxBlocks = 65536;  // grid-stride beyond this
    const int64_t blocks = std::min(kMaxBlocks, (p.count + kernels::kConvertThreads - 1) / kernels::kConvertThreads);
    kernels::f32_to_bf16_kernel<<<static_cast<unsigned>(blocks), kernels::kConvertThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace k2::cuda::detail

// Host launchers of model_ops.h: validate shapes and pointers (naming the op and the bad value), choose the
// 16-byte vector path when the rows allow it, then launch (model_ops.cu).
#include "backend/cuda/model_ops.h"

#include <limits>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/model_ops_detail.h"

namespace k2::cuda {
namespace {

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// One block per row: the grid's x dimension bounds the row count.
constexpr int64_t kMaxRows = std::numeric_limits<int32_t>::max();
// One row lives in one block's registers (kernels::kNormMaxHidden in row_norm.cuh).
constexpr int64_t kMaxNormHidden = 65536;

}  // namespace

void launch_embedding(const EmbeddingParams& p, cudaStream_t stream) {
    K2_CHECK(p.num_tokens >= 0 && p.num_tokens <= kMaxRows, "embedding: num_tokens = {} out of range", p.num_tokens);
    if (p.num_tokens == 0) {
        return;
    }
    K2_CHECK(p.hidden > 0, "embedding: hidden = {} must be positive", p.hidden);
    K2_CHECK(p.vocab > 0, "embedding: vocab = {} must be positive", p.vocab);
    K2_CHECK(p.token_ids != nullptr && p.table != nullptr && p.out != nullptr, "embedding: null pointer");
    const bool vec8 = p.hidden % 8 == 0 && aligned16(p.table) && aligned16(p.out);
    CUDA_CHECK(detail::launch_embedding_kernel(p, vec8, stream));
}

void launch_rms_norm(const RmsNormParams& p, cudaStream_t stream) {
    K2_CHECK(p.num_tokens >= 0 && p.num_tokens <= kMaxRows, "rms_norm: num_tokens = {} out of range", p.num_tokens);
    if (p.num_tokens == 0) {
        return;
    }
    K2_CHECK(p.hidden > 0 && p.hidden <= kMaxNormHidden, "rms_norm: hidden = {} not in [1, {}]", p.hidden,
             kMaxNormHidden);
    K2_CHECK(p.x_stride >= p.hidden, "rms_norm: x_stride {} < hidden {}", p.x_stride, p.hidden);
    K2_CHECK(p.out_stride >= p.hidden, "rms_norm: out_stride {} < hidden {}", p.out_stride, p.hidden);
    K2_CHECK(p.x != nullptr && p.weight != nullptr && p.out != nullptr, "rms_norm: null x, weight or out");
    K2_CHECK(p.eps >= 0.0f, "rms_norm: eps = {} must not be negative", p.eps);
    // In place is supported only as the very same rows: each element is read before the same thread writes it.
    K2_CHECK(p.out != p.x || p.out_stride == p.x_stride, "rms_norm: in place needs out_stride {} == x_stride {}",
             p.out_stride, p.x_stride);
    K2_CHECK(p.residual != p.x && p.residual != p.out, "rms_norm: residual must not alias x or out");
    const bool vec8 = p.hidden % 8 == 0 && p.x_stride % 8 == 0 && p.out_stride % 8 == 0 && aligned16(p.x) &&
                      aligned16(p.weight) && aligned16(p.out) && (p.residual == nullptr || aligned16(p.residual));
    CUDA_CHECK(detail::launch_rms_norm_kernel(p, vec8, stream));
}

void launch_gather_rows(const GatherRowsParams& p, cudaStream_t stream) {
    K2_CHECK(p.num_rows >= 0 && p.num_rows <= kMaxRows, "gather_rows: num_rows = {} out of range", p.num_rows);
    if (p.num_rows == 0) {
        return;
    }
    K2_CHECK(p.width > 0, "gather_rows: width = {} must be positive", p.width);
    K2_CHECK(p.x != nullptr && p.rows != nullptr && p.out != nullptr, "gather_rows: null pointer");
    const bool vec8 = p.width % 8 == 0 && aligned16(p.x) && aligned16(p.out);
    CUDA_CHECK(detail::launch_gather_rows_kernel(p, vec8, stream));
}

void launch_f32_to_bf16(const F32ToBf16Params& p, cudaStream_t stream) {
    K2_CHECK(p.count >= 0, "f32_to_bf16: count = {} must not be negative", p.count);
    if (p.count == 0) {
        return;
    }
    K2_CHECK(p.x != nullptr && p.out != nullptr, "f32_to_bf16: null pointer");
    CUDA_CHECK(detail::launch_f32_to_bf16_kernel(p, stream));
}

}  // namespace k2::cuda

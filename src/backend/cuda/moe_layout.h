// Scale relayout between the two FP8 activation-scale layouts of the MoE path. The fused quant kernels
// (silu_mul_quant) write token-contiguous scales for all P permuted rows, [k / 128, P]; the grouped expert GEMMs
// read them expert-blocked (moe_ops.h): expert e's block starts at off[e] * (k / 128) and is laid out [k / 128, n_e],
// the per-expert layout cuBLASLt's VEC128_32F scales need. Rows past offsets[num_experts] (pairs routed to another
// rank's experts under expert parallelism) belong to no expert and are not written.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace k2::cuda {

struct MoeScaleLayoutParams {
    const float* scale = nullptr;      // [k / 128, P] f32 token-contiguous (row r of group g at g * P + r)
    const int32_t* offsets = nullptr;  // [num_experts + 1] device
    float* out = nullptr;              // [P * k / 128] f32 expert-blocked
    int64_t num_rows = 0;              // P
    int64_t num_groups = 0;            // k / 128
    int num_experts = 0;
};

void launch_moe_scales_to_expert_blocked(const MoeScaleLayoutParams& params, cudaStream_t stream);

}  // namespace k2::cuda

// Decode context parallelism (vllm.md §5) on the GPU: the merge of the DCP group's partial attention outputs. Each
// rank attended the whole group's query heads over the KV tokens it stores (mla_ops.h's attention with lse); after
// the outputs and log-sum-exps are all-gathered, every rank keeps its own heads:
//   L = ln sum_d exp(lse_d)        (NaN / +inf count as -inf; all -inf: the head saw no token, out = 0)
//   out[t, h] = sum_d exp(lse_d - L) * outs[d, t, rank * heads + h]     (fp32 sum, rounded once to bf16)
// The CPU reference is dist::merge_partial_attention (dist/dcp.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace k2::cuda {

struct DcpMergeParams {
    const uint16_t* outs = nullptr;  // [dcp, num_tokens, dcp * heads, lat] bf16 partial outputs of every rank
    const float* lses = nullptr;     // [dcp, num_tokens, dcp * heads]
    uint16_t* out = nullptr;         // [num_tokens, heads, lat] bf16: this rank's heads
    int64_t num_tokens = 0;
    int dcp = 1;   // <= 16
    int rank = 0;  // this rank's place in the DCP group: its heads are [rank * heads, (rank + 1) * heads)
    int heads = 0;
    int lat = 0;  // even
};

void launch_dcp_merge(const DcpMergeParams& params, cudaStream_t stream);

}  // namespace k2::cuda

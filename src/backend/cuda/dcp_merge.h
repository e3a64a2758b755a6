// Decode context parallelism (vllm.md §5) on the GPU: the merge of partial attention outputs. Each rank of the DCP
// group attended the whole group's query heads over the KV tokens it stores (mla_ops.h's attention with lse), maybe
// in several key ranges (split-KV); after the outputs and log-sum-exps are all-gathered, every rank keeps its heads:
//   L = ln sum_p exp(lse_p)        over the num_partials partials (NaN / +inf count as -inf; all -inf: out = 0)
//   out[t, h] = sum_p exp(lse_p - L) * outs[p, t, rank * heads + h]     (fp32 sum, rounded once to bf16)
// The CPU reference is dist::merge_partial_attention (dist/dcp.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace k2::cuda {

inline constexpr int kDcpMaxPartials = 32;

struct DcpMergeParams {
    const uint16_t* outs = nullptr;  // [num_partials, num_tokens, dcp * heads, lat] bf16 partial outputs
    const float* lses = nullptr;     // [num_partials, num_tokens, dcp * heads]
    uint16_t* out = nullptr;         // [num_tokens, heads, lat] bf16: this rank's heads
    float* lse_out = nullptr;        // optional [num_tokens, heads]: L (a partial of a later merge)
    int64_t num_tokens = 0;
    int num_partials = 0;  // <= kDcpMaxPartials; 0: dcp (one key range per rank)
    int dcp = 1;
    int rank = 0;  // this rank's place in the DCP group: its heads are [rank * heads, (rank + 1) * heads)
    int heads = 0;
    int lat = 0;  // even
};

void launch_dcp_merge(const DcpMergeParams& params, cudaStream_t stream);

}  // namespace k2::cuda

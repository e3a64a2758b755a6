// Which part of DeepSeek-V3 / Kimi-K2 one rank of a parallel job holds (dist/parallel.h), and the weight slicing
// that leaves it only that part. vLLM's layout:
//   TP   attention heads split (q_b / q_proj rows, W_UK / W_UV heads, o_proj columns), q_a / kv_a and the
//        router replicated, dense and shared-expert MLPs split on the intermediate dimension (gate/up rows,
//        down columns), routed experts split the same way unless expert parallel is on, embedding and lm_head
//        split by vocabulary rows;
//   EP   routed experts partitioned over TP x DP ranks, each whole;
//   PP   layers split into contiguous stages, embedding on the first stage, final norm + lm_head on the last;
//   DCP  nothing in the weights: the latent cache is split by token (see DeepseekV3Model).
// FP8 slices that start and end on the 128x128 scale blocks stay FP8 (row slices are views into the checkpoint);
// other slices are dequantized to F32 copies (the CPU backend reads either).
#pragma once

#include <cstdint>

#include "dist/parallel.h"
#include "io/model_config.h"

namespace k2 {

struct DeepseekV3Weights;

struct ShardLayout {
    int tp_size = 1;
    int tp_rank = 0;
    int64_t head_begin = 0;  // this rank's heads: [head_begin, head_begin + num_heads)
    int64_t num_heads = 0;
    int64_t vocab_begin = 0;  // this rank's embedding / lm_head rows
    int64_t vocab_size = 0;
    bool expert_parallel = false;
    int ep_size = 1;
    int ep_rank = 0;
    int64_t expert_begin = 0;  // routed experts held whole: [expert_begin, expert_begin + num_experts)
    int64_t num_experts = 0;
    int pp_size = 1;
    int pp_rank = 0;
    int layer_begin = 0;  // layers of this stage: [layer_begin, layer_end)
    int layer_end = 0;
    int dcp_size = 1;
    int dcp_rank = 0;

    bool first_stage() const { return pp_rank == 0; }
    bool last_stage() const { return pp_rank == pp_size - 1; }
    int64_t slice_begin(int64_t n) const { return n / tp_size * tp_rank; }  // a TP slice of a dimension n
    int64_t slice_size(int64_t n) const { return n / tp_size; }
};

// Throws k2::Error naming the config field and flag when the model cannot be split this way (e.g. heads % tp).
ShardLayout make_shard_layout(const ModelConfig& config, const dist::ParallelGroups* groups);

// Replaces every weight of `weights` by this rank's slice and drops what the rank does not hold.
void shard_weights(DeepseekV3Weights& weights, const ModelConfig& config, const ShardLayout& layout);

}  // namespace k2

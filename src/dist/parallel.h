// ParallelConfig: how one job's ranks are laid out (vLLM's -tp, -pp, -dp, -dcp, --enable-expert-parallel), and
// ParallelGroups: the communicators one rank needs for it. Rank layout, TP innermost as in vLLM:
//   rank = (dp_rank * pp_size + pp_rank) * tp_size + tp_rank
// Groups of one rank:
//   tp   the tp_size ranks with its (dp, pp): attention heads, dense/shared MLP columns, vocab shards
//   dcp  the dcp_size consecutive ranks of its TP group holding one sequence's KV cache split by token
//   ep   every (dp, tp) rank of its pipeline stage: experts are partitioned over it when expert parallel is on
//   pp   the pp_size ranks with its (dp, tp), indexed by stage: activations flow stage s -> s + 1
// A DP replica without expert parallelism shares nothing with the other replicas.
#pragma once

#include <memory>
#include <string>

#include "dist/communicator.h"

namespace k2::dist {

struct GlooOptions;

struct ParallelConfig {
    int tensor_parallel_size = 1;
    int pipeline_parallel_size = 1;
    int data_parallel_size = 1;
    int decode_context_parallel_size = 1;  // divides tensor_parallel_size
    bool enable_expert_parallel = false;

    int world_size() const { return tensor_parallel_size * pipeline_parallel_size * data_parallel_size; }
    // Expert-parallel group size: TP x DP with expert parallel, else 1 (every TP rank holds a slice of every expert).
    int expert_parallel_size() const { return enable_expert_parallel ? tensor_parallel_size * data_parallel_size : 1; }
    bool is_single() const { return world_size() == 1; }
    // Throws k2::Error naming the flag for impossible layouts (sizes < 1, tp % dcp != 0).
    void validate() const;
};

struct RankCoord {
    int dp = 0;
    int pp = 0;
    int tp = 0;
};

RankCoord rank_coord(const ParallelConfig& config, int rank);
int rank_of(const ParallelConfig& config, RankCoord coord);

// The communicators of one rank. Every pointer is set (size-1 groups are SingleCommunicators).
struct ParallelGroups {
    ParallelConfig config;
    int rank = 0;
    RankCoord coord;
    std::shared_ptr<Communicator> world;
    std::shared_ptr<Communicator> tp;
    std::shared_ptr<Communicator> dcp;
    std::shared_ptr<Communicator> ep;
    std::shared_ptr<Communicator> pp;

    int dcp_rank() const { return coord.tp % config.decode_context_parallel_size; }
    // The rank that holds a DP replica's logits after forward: TP rank 0 of pipeline stage 0.
    bool is_dp_leader() const { return coord.tp == 0 && coord.pp == 0; }
};

// All groups of `rank` over Gloo (CPU ranks): one rendezvous at base.master_addr:master_port (rank 0 serves
// the store), then one communicator per group with a distinct store prefix. Collective: every rank of the
// job calls it with the same config.
std::shared_ptr<ParallelGroups> make_gloo_groups(const ParallelConfig& config, int rank, const GlooOptions& base);
// Size-1 groups for a single-rank job.
std::shared_ptr<ParallelGroups> make_single_groups();

}  // namespace k2::dist

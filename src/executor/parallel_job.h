// The shape of one parallel serving job, shared by the driver (`k2 serve`), the headless launcher of another node
// and every `k2 worker --task model` rank: which ranks exist (dist/parallel.h), where they meet, which of them
// this node starts, and what each loads.
//
// Nodes and ranks: DP replica d owns the global ranks rank_of({d, pp, tp}) (TP innermost, vLLM's order). A node
// hosts either whole replicas, [dp_start, dp_start + dp_local) (multi-node DP), or, with nnodes > 1, the block of
// world_size / nnodes consecutive ranks [node_rank * n, (node_rank + 1) * n) (TP/PP across nodes, vLLM's
// --nnodes/--node-rank). The driver (rank 0, inside `k2 serve`) drives every rank: this node's through child
// processes, the others through ranks a `k2 serve --headless` launcher started on their node.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "dist/parallel.h"
#include "model/model.h"

namespace k2::executor {

struct ParallelJob {
    dist::ParallelConfig config;
    // Rendezvous (Gloo TcpStore) on master_addr:master_port, ZeroMQ control on master_addr:control_port; both bound
    // by the driver on that address only.
    std::string master_addr = "127.0.0.1";
    int master_port = 29501;
    int control_port = 0;  // 0: master_port + 1
    // DP replicas hosted by this node.
    int dp_start = 0;
    int dp_local = 1;
    // TP/PP across nodes: this node hosts the node_rank-th of nnodes equal blocks of ranks (then dp_local covers all
    // replicas).
    int nnodes = 1;
    int node_rank = 0;
    // Address this node's ranks listen on for Gloo pairs; empty: master_addr (one host).
    std::string host_addr;
    int heartbeat_timeout_ms = 5000;

    int resolved_control_port() const { return control_port != 0 ? control_port : master_port + 1; }
    // Global ranks of DP replica `dp`, ascending; the first is its DP leader (TP rank 0 of stage 0).
    std::vector<int> replica_ranks(int dp) const;
    // Ranks this node hosts, ascending (rank 0 included on the driver's node).
    std::vector<int> local_ranks() const;
    // Ranks other nodes host.
    std::vector<int> remote_ranks() const;
    bool hosts_rank_zero() const { return nnodes > 1 ? node_rank == 0 : dp_start == 0; }
    // Throws k2::Error naming the flag when the node's share does not fit the layout.
    void validate() const;
};

// Gloo timeout of every rank of a serving job (rendezvous and each collective): nodes may start this far apart.
// A dead rank is found sooner by the worker group (waitpid, heartbeats), so this only bounds the rendezvous.
inline constexpr auto kGlooTimeout = std::chrono::seconds(120);

// What every rank loads: the checkpoint and the model options (ModelOptions::parallel stays null here; each rank
// sets its own groups).
struct ShardSpec {
    std::string model_dir;
    ModelOptions model;
};

// `worker` arguments after the common ones WorkerGroup adds (--rank, --world-size, --master-addr, --master-port,
// --control-port): --task model and everything model_worker.cpp parses back into a ParallelJob and ShardSpec.
std::vector<std::string> model_worker_args(const ParallelJob& job, const ShardSpec& spec);

std::string kv_cache_dtype_name(KvCacheDType dtype);
KvCacheDType parse_kv_cache_dtype_name(const std::string& name);

// vLLM's per-rank line: "rank 2 in world size 4 is assigned as DP rank 1, PP rank 0, TP rank 0, EP rank 2".
std::string describe_rank(const dist::ParallelConfig& config, int rank);

// OpenMP threads per rank: this machine's cores shared by the ranks it hosts (at least 1).
int threads_per_rank(int ranks_on_node);

}  // namespace k2::executor

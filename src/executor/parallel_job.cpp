#include "executor/parallel_job.h"

#include <fmt/format.h>

#include <algorithm>
#include <thread>

#include "core/error.h"

namespace k2::executor {

std::vector<int> ParallelJob::replica_ranks(int dp) const {
    std::vector<int> ranks;
    for (int pp = 0; pp < config.pipeline_parallel_size; ++pp) {
        for (int tp = 0; tp < config.tensor_parallel_size; ++tp) {
            ranks.push_back(dist::rank_of(config, {dp, pp, tp}));
        }
    }
    std::sort(ranks.begin(), ranks.end());
    return ranks;
}

std::vector<int> ParallelJob::local_ranks() const {
    std::vector<int> ranks;
    if (nnodes > 1) {
        const int per_node = config.world_size() / nnodes;
        for (int rank = node_rank * per_node; rank < (node_rank + 1) * per_node; ++rank) {
            ranks.push_back(rank);
        }
        return ranks;
    }
    for (int dp = dp_start; dp < dp_start + dp_local; ++dp) {
        for (int rank : replica_ranks(dp)) {
            ranks.push_back(rank);
        }
    }
    std::sort(ranks.begin(), ranks.end());
    return ranks;
}

std::vector<int> ParallelJob::remote_ranks() const {
    const std::vector<int> local = local_ranks();
    std::vector<int> ranks;
    for (int rank = 0; rank < config.world_size(); ++rank) {
        if (!std::binary_search(local.begin(), local.end(), rank)) {
            ranks.push_back(rank);
        }
    }
    return ranks;
}

void ParallelJob::validate() const {
    config.validate();
    const int dp = config.data_parallel_size;
    K2_CHECK(dp_local >= 1 && dp_local <= dp, "--data-parallel-size-local {} must be in [1, --data-parallel-size {}]",
             dp_local, dp);
    K2_CHECK(dp_start >= 0 && dp_start + dp_local <= dp,
             "--data-parallel-start-rank {} with --data-parallel-size-local {} goes past --data-parallel-size {}",
             dp_start, dp_local, dp);
    K2_CHECK(nnodes >= 1 && node_rank >= 0 && node_rank < nnodes, "--node-rank {} must be in [0, --nnodes {})",
             node_rank, nnodes);
    K2_CHECK(config.world_size() % nnodes == 0, "world size {} (TP x PP x DP) is not divisible by --nnodes {}",
             config.world_size(), nnodes);
    K2_CHECK(nnodes == 1 || (dp_start == 0 && dp_local == dp),
             "--nnodes splits every replica's ranks over the nodes; it does not combine with "
             "--data-parallel-size-local / --data-parallel-start-rank");
    K2_CHECK(master_port > 0 && master_port < 65535, "--master-port {} is not a usable port", master_port);
}

std::vector<std::string> model_worker_args(const ParallelJob& job, const ShardSpec& spec) {
    const dist::ParallelConfig& c = job.config;
    std::vector<std::string> args = {
        "--task",
        "model",
        "--heartbeat-timeout-ms",
        std::to_string(job.heartbeat_timeout_ms),
        "--model",
        spec.model_dir,
        "--tensor-parallel-size",
        std::to_string(c.tensor_parallel_size),
        "--pipeline-parallel-size",
        std::to_string(c.pipeline_parallel_size),
        "--data-parallel-size",
        std::to_string(c.data_parallel_size),
        "--decode-context-parallel-size",
        std::to_string(c.decode_context_parallel_size),
        "--device",
        spec.model.device,
        "--kv-cache-dtype",
        kv_cache_dtype_name(spec.model.kv_cache_dtype),
        "--num-threads",
        std::to_string(spec.model.num_threads),
        "--max-num-batched-tokens",
        std::to_string(spec.model.max_num_tokens),
        "--max-num-seqs",
        std::to_string(spec.model.max_num_seqs),
        "--max-model-len",
        std::to_string(spec.model.max_model_len),
    };
    if (c.enable_expert_parallel) {
        args.emplace_back("--enable-expert-parallel");
    }
    if (spec.model.enforce_eager) {
        args.emplace_back("--enforce-eager");
    }
    if (!job.host_addr.empty()) {
        args.insert(args.end(), {"--host-addr", job.host_addr});
    }
    return args;
}

std::string kv_cache_dtype_name(KvCacheDType dtype) {
    switch (dtype) {
        case KvCacheDType::F32:
            return "float32";
        case KvCacheDType::BF16:
            return "bfloat16";
        case KvCacheDType::FP8_E4M3:
            return "fp8_e4m3";
    }
    return "float32";
}

KvCacheDType parse_kv_cache_dtype_name(const std::string& name) {
    if (name == "float32")
        return KvCacheDType::F32;
    if (name == "bfloat16")
        return KvCacheDType::BF16;
    if (name == "fp8_e4m3")
        return KvCacheDType::FP8_E4M3;
    K2_FAIL("--kv-cache-dtype {} is not one of float32, bfloat16, fp8_e4m3", name);
}

std::string describe_rank(const dist::ParallelConfig& config, int rank) {
    const dist::RankCoord coord = dist::rank_coord(config, rank);
    const int ep_rank = config.enable_expert_parallel ? coord.dp * config.tensor_parallel_size + coord.tp : 0;
    return fmt::format(
        "rank {} in world size {} is assigned as DP rank {}, PP rank {}, TP rank {}, DCP rank {}, "
        "EP rank {}",
        rank, config.world_size(), coord.dp, coord.pp, coord.tp, coord.tp % config.decode_context_parallel_size,
        ep_rank);
}

int threads_per_rank(int ranks_on_node) {
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    return std::max(1, cores / std::max(1, ranks_on_node));
}

}  // namespace k2::executor

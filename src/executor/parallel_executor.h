// The driver side of a parallel job (`k2 serve -tp/-pp/-dcp/-dp ...`): rank 0's shard lives in this process, the
// other ranks in `k2 worker --task model` processes (WorkerGroup: this node's are children, other nodes' were
// started by their `k2 serve --headless` and are watched through heartbeats).
//
// ParallelExecutor owns the WorkerGroup and rank 0's model; ShardedModel is the k2::Model one Engine drives: one
// per DP replica. A forward of replica d becomes a world step: every replica's ranks get a StepPlan (the replica's
// batch, or is_dummy when its engine has nothing to run, so expert-parallel all-to-alls always meet), rank 0
// runs its shard, and replica d's logits come from its DP leader (rank 0 for replica 0, a StepResult control
// message from the leader's process otherwise). Engines that call forward while a world step runs are batched
// into the next one; the first engine to arrive runs the step on its own thread and hands the others their
// logits, so no extra thread sits between the engines and the ranks.
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "dist/logits_shm.h"
#include "dist/worker_group.h"
#include "executor/parallel_job.h"
#include "model/model.h"

namespace k2::executor {

class ParallelExecutor {
public:
    using FailureCallback = std::function<void(const std::string& message)>;

    // Launches this node's worker ranks, joins the groups as rank 0, loads rank 0's shard and returns once every
    // rank reported its shard loaded. on_failure (called from the monitor thread) reports a rank that exits,
    // hangs or fails, naming it; it is where the server turns unhealthy and exits. Throws k2::Error naming the
    // rank when one fails during startup.
    static std::shared_ptr<ParallelExecutor> start(const ParallelJob& job, const ShardSpec& spec,
                                                   FailureCallback on_failure);
    ~ParallelExecutor();
    ParallelExecutor(const ParallelExecutor&) = delete;
    ParallelExecutor& operator=(const ParallelExecutor&) = delete;

    // Shutdown to every rank, then SIGTERM/SIGKILL for stragglers on this node. Idempotent.
    void shutdown(const std::string& reason);

    int num_replicas() const { return m_job.config.data_parallel_size; }
    const ParallelJob& job() const { return m_job; }
    const ModelConfig& config() const { return m_local->config(); }
    size_t kv_cache_bytes_per_block() const { return m_local->kv_cache_bytes_per_block(); }
    size_t kv_cache_budget_bytes(double utilization) const { return m_local->kv_cache_budget_bytes(utilization); }
    std::optional<std::string> failure() const { return m_group->failure(); }

    void allocate_kv_cache(int dp, int num_blocks);
    // Thread-safe: one engine thread per replica. Returns replica dp's logits [num_logits, vocab].
    Tensor forward(int dp, const ForwardBatch& batch);

private:
    struct Slot {
        const ForwardBatch* pending = nullptr;  // the engine's batch, waiting for a world step
        bool done = false;
        Tensor result;
        std::string error;
        bool in_last_step = false;  // had work in the previous world step: worth waiting a moment for
    };

    ParallelExecutor(ParallelJob job, ShardSpec spec);
    void launch(FailureCallback on_failure);
    void wait_loaded();
    // Runs one world step over `batches` (null: dummy for that replica); returns the logits of each non-null one.
    std::vector<Tensor> run_world_step(const std::vector<const ForwardBatch*>& batches);
    Tensor await_result(uint64_t step, int dp);
    void lead_step(std::unique_lock<std::mutex>& lock);

    ParallelJob m_job;
    ShardSpec m_spec;
    std::unique_ptr<dist::WorkerGroup> m_group;
    std::shared_ptr<dist::ParallelGroups> m_groups;
    std::unique_ptr<Model> m_local;  // rank 0's shard
    uint64_t m_step_id = 0;
    std::vector<dist::StepResult> m_early_results;  // results read while waiting for another replica's
    // [num_replicas]: the segment replica d's leader leaves its logits in; null for replica 0 (this process) and for
    // leaders on other hosts.
    std::vector<std::unique_ptr<dist::LogitsShm>> m_logits_shm;

    std::mutex m_mutex;
    std::condition_variable m_cv;
    std::vector<Slot> m_slots;  // [num_replicas]
    bool m_step_running = false;
    bool m_shut_down = false;
};

// The k2::Model of DP replica `dp` over a ParallelExecutor (what one Engine owns).
class ShardedModel final : public Model {
public:
    ShardedModel(std::shared_ptr<ParallelExecutor> executor, int dp) : m_executor(std::move(executor)), m_dp(dp) {}

    const ModelConfig& config() const override { return m_executor->config(); }
    size_t kv_cache_bytes_per_block() const override { return m_executor->kv_cache_bytes_per_block(); }
    void allocate_kv_cache(int num_blocks) override { m_executor->allocate_kv_cache(m_dp, num_blocks); }
    size_t kv_cache_budget_bytes(double utilization) const override {
        return m_executor->kv_cache_budget_bytes(utilization);
    }
    Tensor forward(const ForwardBatch& batch) override { return m_executor->forward(m_dp, batch); }

private:
    std::shared_ptr<ParallelExecutor> m_executor;
    int m_dp;
};

// `k2 serve --headless`: starts this node's ranks (the replicas [dp_start, dp_start + dp_local)) pointed at the
// driver's node, and waits. Returns 0 when they finished because the driver shut them down (or on SIGTERM/SIGINT),
// 1 when one failed (the message names it).
int run_headless(const ParallelJob& job, const ShardSpec& spec);

}  // namespace k2::executor

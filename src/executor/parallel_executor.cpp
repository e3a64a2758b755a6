#include "executor/parallel_executor.h"

#include <fmt/ranges.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <set>
#include <thread>

#include "core/error.h"
#include "core/log.h"
#include "dist/gloo_communicator.h"

namespace k2::executor {

namespace {

using Clock = std::chrono::steady_clock;
// How long the engine that starts a world step waits for replicas that were busy in the previous one, so busy
// replicas share steps instead of alternating with dummy steps.
constexpr auto kGatherWindow = std::chrono::microseconds(2000);
constexpr auto kPoll = std::chrono::milliseconds(100);
constexpr auto kLoadTimeout = std::chrono::minutes(30);

dist::WorkerGroupOptions group_options(const ParallelJob& job, const ShardSpec& spec) {
    dist::WorkerGroupOptions options;
    options.world_size = job.config.world_size();
    options.master_addr = job.master_addr;
    options.master_port = job.master_port;
    options.control_port = job.resolved_control_port();
    options.heartbeat_timeout = std::chrono::milliseconds(job.heartbeat_timeout_ms);
    options.extra_args = model_worker_args(job, spec);
    options.ranks.emplace();
    for (int rank : job.local_ranks()) {
        if (rank != 0) {
            options.ranks->push_back(rank);
        }
    }
    options.remote_ranks = job.remote_ranks();
    return options;
}

}  // namespace

ParallelExecutor::ParallelExecutor(ParallelJob job, ShardSpec spec)
    : m_job(std::move(job)), m_spec(std::move(spec)), m_slots(static_cast<size_t>(m_job.config.data_parallel_size)) {}

std::shared_ptr<ParallelExecutor> ParallelExecutor::start(const ParallelJob& job, const ShardSpec& spec,
                                                          FailureCallback on_failure) {
    job.validate();
    K2_CHECK(job.hosts_rank_zero(),
             "the driver (rank 0) runs on the node with --data-parallel-start-rank 0 and "
             "--node-rank 0");
    std::shared_ptr<ParallelExecutor> executor(new ParallelExecutor(job, spec));
    executor->launch(std::move(on_failure));
    return executor;
}

ParallelExecutor::~ParallelExecutor() {
    shutdown("driver exiting");
}

void ParallelExecutor::launch(FailureCallback on_failure) {
    const dist::ParallelConfig& c = m_job.config;
    K2_INFO(
        "Parallel layout: world_size={} (TP={}, PP={}, DP={}, DCP={}, expert parallel {}), backend=gloo, "
        "distributed_init_method=tcp://{}:{}, control tcp://{}:{}",
        c.world_size(), c.tensor_parallel_size, c.pipeline_parallel_size, c.data_parallel_size,
        c.decode_context_parallel_size, c.enable_expert_parallel ? "on" : "off", m_job.master_addr, m_job.master_port,
        m_job.master_addr, m_job.resolved_control_port());
    dist::WorkerGroupOptions options = group_options(m_job, m_spec);
    // Before the workers start: a replica leader on this host finds its logits segment when it loads.
    m_logits_shm.resize(static_cast<size_t>(c.data_parallel_size));
    const std::vector<int> local = m_job.local_ranks();
    for (int d = 1; d < c.data_parallel_size; ++d) {
        if (std::find(local.begin(), local.end(), dist::rank_of(c, {d, 0, 0})) != local.end()) {
            m_logits_shm[static_cast<size_t>(d)] =
                dist::LogitsShm::create(dist::LogitsShm::name(m_job.resolved_control_port(), d));
        }
    }
    if (!options.remote_ranks.empty()) {
        K2_INFO("Waiting for ranks {} from other nodes (k2 serve --headless --data-parallel-start-rank ...)",
                fmt::join(options.remote_ranks, ", "));
    }
    m_group = std::make_unique<dist::WorkerGroup>(std::move(options), std::move(on_failure));
    m_group->start();
    dist::GlooOptions base;
    base.master_addr = m_job.master_addr;
    base.master_port = m_job.master_port;
    base.host_addr = m_job.host_addr;
    base.timeout = kGlooTimeout;
    m_groups = dist::make_gloo_groups(c, 0, base);
    K2_INFO("{}", describe_rank(c, 0));
    ModelOptions model_options = m_spec.model;
    model_options.parallel = m_groups;
    m_local = load_model(m_spec.model_dir, model_options);
    wait_loaded();
    for (const std::unique_ptr<dist::LogitsShm>& shm : m_logits_shm) {
        if (shm != nullptr) {
            shm->unlink();  // every leader opened its segment while loading
        }
    }
    K2_INFO("All {} ranks loaded their shards", c.world_size());
}

void ParallelExecutor::wait_loaded() {
    std::set<int> waiting;
    for (int rank = 1; rank < m_job.config.world_size(); ++rank) {
        waiting.insert(rank);
    }
    const auto deadline = Clock::now() + kLoadTimeout;
    while (!waiting.empty()) {
        if (const std::optional<std::string> failure = m_group->failure()) {
            K2_FAIL("{}", *failure);
        }
        K2_CHECK(Clock::now() < deadline, "ranks {} did not finish loading", fmt::join(waiting, ", "));
        std::optional<dist::ReceivedMessage> received = m_group->receive(kPoll);
        if (received && std::holds_alternative<dist::WorkerStatus>(received->message)) {
            waiting.erase(received->rank);
        }
    }
}

void ParallelExecutor::shutdown(const std::string& reason) {
    {
        std::lock_guard lock(m_mutex);
        if (m_shut_down) {
            return;
        }
        m_shut_down = true;
    }
    if (m_group) {
        m_group->shutdown(reason);
    }
}

void ParallelExecutor::allocate_kv_cache(int dp, int num_blocks) {
    std::lock_guard lock(m_mutex);
    K2_CHECK(dp >= 0 && dp < num_replicas(), "DP rank {} outside {} replicas", dp, num_replicas());
    for (int rank : m_job.replica_ranks(dp)) {
        if (rank == 0) {
            m_local->allocate_kv_cache(num_blocks);
        } else {
            m_group->send_to(rank, dist::AllocateKv{num_blocks});
        }
    }
}

Tensor ParallelExecutor::forward(int dp, const ForwardBatch& batch) {
    std::unique_lock lock(m_mutex);
    Slot& slot = m_slots[static_cast<size_t>(dp)];
    slot.pending = &batch;
    slot.done = false;
    m_cv.notify_all();
    while (!slot.done) {
        if (!m_step_running) {
            lead_step(lock);
        } else {
            m_cv.wait(lock);
        }
    }
    K2_CHECK(slot.error.empty(), "{}", slot.error);
    return std::move(slot.result);
}

// Called with the lock held by the engine thread that starts the next world step.
void ParallelExecutor::lead_step(std::unique_lock<std::mutex>& lock) {
    m_step_running = true;
    m_cv.wait_for(lock, kGatherWindow, [this] {
        for (const Slot& slot : m_slots) {
            if (slot.in_last_step && slot.pending == nullptr) {
                return false;
            }
        }
        return true;
    });
    std::vector<const ForwardBatch*> batches(m_slots.size());
    for (size_t d = 0; d < m_slots.size(); ++d) {
        batches[d] = m_slots[d].pending;
        m_slots[d].in_last_step = batches[d] != nullptr;
        m_slots[d].pending = nullptr;
    }
    lock.unlock();
    std::vector<Tensor> results;
    std::string error;
    try {
        results = run_world_step(batches);
    } catch (const std::exception& e) {
        error = e.what();
    }
    lock.lock();
    for (size_t d = 0; d < m_slots.size(); ++d) {
        if (batches[d] != nullptr) {
            m_slots[d].done = true;
            m_slots[d].error = error;
            m_slots[d].result = error.empty() ? std::move(results[d]) : Tensor();
        }
    }
    m_step_running = false;
    m_cv.notify_all();
}

std::vector<Tensor> ParallelExecutor::run_world_step(const std::vector<const ForwardBatch*>& batches) {
    const uint64_t step = ++m_step_id;
    std::vector<int32_t> num_tokens;  // ForwardBatch::dp_num_tokens: every replica, dummies included, learns them
    bool decode_only = false;         // ForwardBatch::dp_decode_only: every busy replica decodes (and one is busy)
    bool any_other = false;
    for (const ForwardBatch* batch : batches) {
        num_tokens.push_back(batch != nullptr ? batch->num_tokens() : 0);
        if (batch != nullptr && batch->num_tokens() > 0) {
            (batch->is_decode() ? decode_only : any_other) = true;
        }
    }
    decode_only = decode_only && !any_other;
    for (size_t d = 0; d < batches.size(); ++d) {
        dist::StepPlan plan;
        plan.step_id = step;
        plan.is_dummy = batches[d] == nullptr;
        if (!plan.is_dummy) {
            plan.batch = *batches[d];
        }
        plan.batch.dp_num_tokens = num_tokens;
        plan.batch.dp_decode_only = decode_only;
        for (int rank : m_job.replica_ranks(static_cast<int>(d))) {
            if (rank != 0) {
                m_group->send_to(rank, plan);
            }
        }
    }
    static const ForwardBatch kEmpty;
    std::vector<Tensor> results(batches.size());
    // omp_set_num_threads is per thread and the model set it on the thread that loaded it; rank 0's shard runs on
    // whichever engine thread leads this step, which would otherwise use every core while the ranks beside it on
    // this node use theirs.
    if (m_spec.model.num_threads > 0) {
        omp_set_num_threads(m_spec.model.num_threads);
    }
    const ForwardBatch& own = batches[0] != nullptr ? *batches[0] : kEmpty;
    Tensor local;              // [num_logits, vocab]
    if (batches.size() > 1) {  // the replicas' token counts ride on a copy (the engine's batch is const)
        ForwardBatch with_counts = own;
        with_counts.dp_num_tokens = num_tokens;
        with_counts.dp_decode_only = decode_only;
        local = m_local->forward(with_counts);
    } else {
        local = m_local->forward(own);
    }
    if (batches[0] != nullptr) {
        results[0] = std::move(local);
    }
    for (size_t d = 1; d < batches.size(); ++d) {
        if (batches[d] != nullptr) {
            results[d] = await_result(step, static_cast<int>(d));
        }
    }
    return results;
}

// Replica dp's logits of `step`, sent by its DP leader; results of other replicas read on the way are kept.
Tensor ParallelExecutor::await_result(uint64_t step, int dp) {
    auto to_tensor = [&](const dist::StepResult& r) {
        Tensor logits = Tensor::zeros(DType::F32, {r.rows, r.cols});  // [num_logits, vocab]
        if (r.in_shared_memory) {
            dist::LogitsShm* shm = m_logits_shm[static_cast<size_t>(dp)].get();
            K2_CHECK(shm != nullptr, "DP replica {} left its logits in shared memory this process did not create", dp);
            shm->read(logits.span<float>());
        } else if (!r.logits.empty()) {  // memcpy from an empty vector's null data() is undefined
            std::memcpy(logits.data_as<float>(), r.logits.data(), r.logits.size() * sizeof(float));
        }
        return logits;
    };
    while (true) {
        for (auto it = m_early_results.begin(); it != m_early_results.end(); ++it) {
            if (it->step_id == step && it->dp_rank == dp) {
                Tensor logits = to_tensor(*it);
                m_early_results.erase(it);
                return logits;
            }
        }
        if (const std::optional<std::string> failure = m_group->failure()) {
            K2_FAIL("step {} of DP replica {} failed: {}", step, dp, *failure);
        }
        std::optional<dist::ReceivedMessage> received = m_group->receive(kPoll);
        if (!received) {
            continue;
        }
        if (auto* result = std::get_if<dist::StepResult>(&received->message)) {
            if (result->step_id == step) {
                m_early_results.push_back(std::move(*result));
            } else {
                K2_WARN("dropping logits of step {} from rank {} (waiting for step {})", result->step_id,
                        received->rank, step);
            }
        }
    }
}

int run_headless(const ParallelJob& job, const ShardSpec& spec) {
    job.validate();
    K2_CHECK(!job.hosts_rank_zero(),
             "--headless hosts ranks of a job whose driver runs elsewhere: pass "
             "--data-parallel-start-rank (> 0) and --data-parallel-address, or --node-rank (> 0) and --master-addr");
    dist::WorkerGroupOptions options;
    options.world_size = job.config.world_size();
    options.master_addr = job.master_addr;
    options.master_port = job.master_port;
    options.control_port = job.resolved_control_port();
    options.extra_args = model_worker_args(job, spec);
    options.ranks = job.local_ranks();
    options.serve_control = false;
    options.exit_zero_is_failure = false;
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    dist::WorkerGroup group(options, [](const std::string& message) {
        std::fprintf(stderr, "error: headless node: %s; exiting\n", message.c_str());
        std::fflush(stderr);
        std::_Exit(1);
    });
    group.start();
    K2_INFO("Headless node: {} = ranks {} of world size {}, driver at {}:{}",
            job.nnodes > 1 ? fmt::format("node {} of {}", job.node_rank, job.nnodes)
                           : fmt::format("DP replicas [{}, {})", job.dp_start, job.dp_start + job.dp_local),
            fmt::join(*options.ranks, ", "), job.config.world_size(), job.master_addr, job.master_port);
    const timespec tick{0, 100'000'000};
    while (true) {
        const int signal_number = sigtimedwait(&signals, nullptr, &tick);
        if (signal_number == SIGTERM || signal_number == SIGINT) {
            K2_INFO("Headless node: received signal {}; stopping ranks", signal_number);
            group.shutdown("headless node received a stop signal");
            return 0;
        }
        if (group.all_exited()) {
            K2_INFO("Headless node: every rank finished (the driver shut the job down)");
            group.shutdown("done");
            return 0;
        }
    }
}

}  // namespace k2::executor

#include "executor/model_worker.h"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdlib>
#include <memory>
#include <utility>

#include "core/error.h"
#include "core/log.h"
#include "dist/gloo_communicator.h"
#include "dist/logits_shm.h"
#include "dist/worker_group.h"
#include "executor/parallel_job.h"

namespace k2::executor {

namespace {

struct ModelWorkerFlags {
    std::string model;
    dist::ParallelConfig config;
    std::string device = "cpu";
    std::string kv_cache_dtype = "float32";
    int num_threads = 0;
    int max_num_batched_tokens = 8192;
    int max_num_seqs = 256;
    int max_model_len = 0;
    bool enforce_eager = false;
    std::string host_addr;
};

void add_model_options(CLI::App& cmd, const std::shared_ptr<ModelWorkerFlags>& f) {
    cmd.add_option("--model", f->model, "model task: checkpoint directory");
    cmd.add_option("--tensor-parallel-size", f->config.tensor_parallel_size, "model task: TP size");
    cmd.add_option("--pipeline-parallel-size", f->config.pipeline_parallel_size, "model task: PP size");
    cmd.add_option("--data-parallel-size", f->config.data_parallel_size, "model task: DP size");
    cmd.add_option("--decode-context-parallel-size", f->config.decode_context_parallel_size, "model task: DCP size");
    cmd.add_flag("--enable-expert-parallel", f->config.enable_expert_parallel, "model task: EP over TP x DP");
    cmd.add_option("--device", f->device, "model task: cpu or cuda");
    cmd.add_option("--kv-cache-dtype", f->kv_cache_dtype, "model task: float32, bfloat16 or fp8_e4m3");
    cmd.add_option("--num-threads", f->num_threads, "model task: OpenMP threads (0: default)");
    cmd.add_option("--max-num-batched-tokens", f->max_num_batched_tokens, "model task: tokens per step");
    cmd.add_option("--max-num-seqs", f->max_num_seqs, "model task: sequences per step");
    cmd.add_option("--max-model-len", f->max_model_len, "model task: context length (0: the config's)");
    cmd.add_flag("--enforce-eager", f->enforce_eager, "model task: no CUDA graphs");
    cmd.add_option("--host-addr", f->host_addr, "model task: address this rank's Gloo pairs listen on");
}

// Tells the driver why this rank cannot go on, then exits (the driver names the rank and this text).
[[noreturn]] void report_and_exit(dist::WorkerControl& control, int rank, const std::string& error) {
    K2_ERROR("rank {}: {}", rank, error);
    control.send(dist::WorkerStatus{rank, false, error.substr(0, dist::kMaxControlStringBytes)});
    control.flush(std::chrono::milliseconds(1000));
    std::_Exit(1);
}

// TEST ONLY: K2_TEST_FAIL_LOAD_RANK=R (with K2_ENABLE_TEST_MODEL=1, as the scripted model) makes rank R fail after
// loading, so the tests can watch a worker's load error travel to the driver.
void inject_test_failure(int rank) {
    const char* enabled = std::getenv("K2_ENABLE_TEST_MODEL");
    const char* fail_rank = std::getenv("K2_TEST_FAIL_LOAD_RANK");
    if (enabled != nullptr && std::string(enabled) == "1" && fail_rank != nullptr &&
        std::string(fail_rank) == std::to_string(rank)) {
        K2_FAIL("injected load failure (K2_TEST_FAIL_LOAD_RANK={})", rank);
    }
}

struct LoadedShard {
    std::shared_ptr<dist::ParallelGroups> groups;
    std::unique_ptr<Model> model;
    std::unique_ptr<dist::LogitsShm> logits_shm;  // a DP leader on the driver's host: where its logits go
};

LoadedShard load_shard(const dist::WorkerArgs& args, const ModelWorkerFlags& f) {
    K2_CHECK(!f.model.empty(), "--task model needs --model");
    f.config.validate();
    K2_CHECK(f.config.world_size() == args.world_size, "--world-size {} disagrees with the layout's {}",
             args.world_size, f.config.world_size());
    dist::GlooOptions base;
    base.master_addr = args.master_addr;
    base.master_port = args.master_port;
    base.host_addr = f.host_addr;
    base.timeout = kGlooTimeout;
    LoadedShard shard;
    shard.groups = dist::make_gloo_groups(f.config, args.rank, base);
    K2_INFO("{}", describe_rank(f.config, args.rank));
    ModelOptions options;
    options.device = f.device;
    options.kv_cache_dtype = parse_kv_cache_dtype_name(f.kv_cache_dtype);
    options.num_threads = f.num_threads;
    options.max_num_tokens = f.max_num_batched_tokens;
    options.max_num_seqs = f.max_num_seqs;
    options.max_model_len = f.max_model_len;
    options.enforce_eager = f.enforce_eager;
    options.parallel = shard.groups;
    shard.model = load_model(f.model, options);
    if (shard.groups->is_dp_leader() && shard.groups->coord.dp > 0) {
        const std::string name = dist::LogitsShm::name(args.control_port, shard.groups->coord.dp);
        shard.logits_shm = dist::LogitsShm::open(name);
        K2_INFO("rank {}: DP replica {}'s logits go to the driver {}", args.rank, shard.groups->coord.dp,
                shard.logits_shm != nullptr ? "through shared memory " + name : "in the control messages");
    }
    inject_test_failure(args.rank);
    return shard;
}

// One StepPlan: every rank runs it; the DP leader of its replica returns the logits to the driver.
void run_step(dist::WorkerControl& control, const LoadedShard& shard, const dist::StepPlan& plan) {
    // A dummy's batch is empty apart from dp_num_tokens (the step's expert exchange on GPUs).
    const Tensor logits = shard.model->forward(plan.batch);  // [num_logits, vocab]
    if (!plan.is_dummy && shard.groups->is_dp_leader()) {
        dist::StepResult result;
        result.step_id = plan.step_id;
        result.dp_rank = shard.groups->coord.dp;
        result.rows = static_cast<int32_t>(logits.dim(0));
        result.cols = static_cast<int32_t>(logits.dim(1));
        const std::span<const float> values = logits.span<float>();
        result.in_shared_memory = shard.logits_shm != nullptr && shard.logits_shm->write(values);
        if (!result.in_shared_memory) {
            result.logits.assign(values.begin(), values.end());
        }
        control.send(std::move(result));  // moved into the message: the logits are megabytes
    }
    control.set_step(plan.step_id);
}

void run_model_worker(const dist::WorkerArgs& args, const ModelWorkerFlags& flags) {
    // Ctrl-C reaches the whole process group; the driver decides how the job ends.
    std::signal(SIGINT, SIG_IGN);
    dist::WorkerControl control(args.master_addr, args.control_port, args.rank,
                                std::chrono::milliseconds(args.heartbeat_timeout_ms));
    LoadedShard shard;
    try {
        shard = load_shard(args, flags);
    } catch (const std::exception& error) {
        report_and_exit(control, args.rank, fmt::format("loading {}: {}", flags.model, error.what()));
    }
    control.send(dist::WorkerStatus{args.rank, true, ""});
    uint64_t step = 0;
    try {
        while (true) {
            std::optional<dist::ControlMessage> message = control.next(std::chrono::milliseconds(1000));
            if (!message) {
                continue;
            }
            if (std::holds_alternative<dist::Shutdown>(*message)) {
                return;
            }
            if (const auto* allocate = std::get_if<dist::AllocateKv>(&*message)) {
                shard.model->allocate_kv_cache(allocate->num_blocks);
            } else if (const auto* plan = std::get_if<dist::StepPlan>(&*message)) {
                step = plan->step_id;
                run_step(control, shard, *plan);
            }
        }
    } catch (const std::exception& error) {
        report_and_exit(control, args.rank, fmt::format("step {}: {}", step, error.what()));
    }
}

}  // namespace

dist::WorkerTask model_worker_task() {
    auto flags = std::make_shared<ModelWorkerFlags>();
    dist::WorkerTask task;
    task.name = "model";
    task.add_options = [flags](CLI::App& cmd) { add_model_options(cmd, flags); };
    task.run = [flags](const dist::WorkerArgs& args) { run_model_worker(args, *flags); };
    return task;
}

}  // namespace k2::executor

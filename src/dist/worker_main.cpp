#include "dist/worker_main.h"

#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <memory>
#include <numeric>
#include <vector>

#include <CLI/CLI.hpp>

#include "core/error.h"
#include "core/log.h"
#include "dist/gloo_communicator.h"
#include "dist/worker_group.h"

namespace k2::dist {

namespace {

volatile std::sig_atomic_t g_stop_signal = 0;

void on_stop_signal(int signal) { g_stop_signal = signal; }

// all_reduce of [rank+1] * 1024 must give W(W+1)/2 everywhere.
void run_collectives(const WorkerArgs& args) {
    GlooOptions options;
    options.rank = args.rank;
    options.world_size = args.world_size;
    options.master_addr = args.master_addr;
    options.master_port = args.master_port;
    GlooCommunicator comm(options);
    std::vector<float> values(1024, static_cast<float>(args.rank + 1));  // [1024]
    comm.all_reduce_sum(values);
    const float expected = static_cast<float>(args.world_size * (args.world_size + 1) / 2);
    for (float v : values) {
        K2_CHECK(v == expected, "rank {}: all_reduce gave {}, expected {}", args.rank, v, expected);
    }
    comm.barrier();
    std::printf("rank %d: collectives ok\n", args.rank);
    std::fflush(stdout);
}

constexpr uint64_t kDemoSteps = 5;

// Step s of the `steps` task: two sequences with s + 1 prefill tokens and one decode token; odd steps are dummy.
StepPlan demo_plan(uint64_t step) {
    StepPlan plan;
    plan.step_id = step;
    plan.is_dummy = step % 2 == 1;
    ForwardBatch& b = plan.batch;
    const auto prefill = static_cast<int32_t>(step + 1);
    for (int32_t i = 0; i < prefill; ++i) {
        b.token_ids.push_back(100 + i);
        b.positions.push_back(i);
        b.slot_mapping.push_back(i);
    }
    b.token_ids.push_back(7);
    b.positions.push_back(63);
    b.slot_mapping.push_back(64 + 63);
    b.query_start = {0, prefill, prefill + 1};
    b.seq_lens = {prefill, 64};
    b.max_blocks_per_seq = 1;
    b.block_tables = {0, 1};
    b.logits_indices = {prefill - 1, prefill};
    return plan;
}

void check_demo_plan(const StepPlan& plan) {
    const StepPlan want = demo_plan(plan.step_id);
    K2_CHECK(plan.is_dummy == want.is_dummy && plan.batch.token_ids == want.batch.token_ids &&
                 plan.batch.slot_mapping == want.batch.slot_mapping &&
                 plan.batch.logits_indices == want.batch.logits_indices,
             "step {}: StepPlan differs from what the driver sent", plan.step_id);
}

void run_driver(const WorkerArgs& args) {
    WorkerGroupOptions options;
    options.world_size = args.world_size;
    options.master_addr = args.master_addr;
    options.master_port = args.master_port;
    options.control_port = args.control_port;
    options.extra_args = {"--task", args.task, "--heartbeat-timeout-ms", std::to_string(args.heartbeat_timeout_ms)};
    options.heartbeat_timeout = std::chrono::milliseconds(args.heartbeat_timeout_ms);
    WorkerGroup group(options, [](const std::string& message) {
        // The main thread may be inside a collective with the dead rank; exit from the monitor thread.
        std::fprintf(stderr, "error: worker group failed: %s\n", message.c_str());
        std::fflush(stderr);
        std::_Exit(1);
    });
    group.start();
    if (args.task == "collectives") {
        run_collectives(args);
    }
    K2_CHECK(group.wait_ready(std::chrono::seconds(60)), "worker group did not start: {}",
             group.failure().value_or("timeout"));
    std::string pids;
    for (const auto& [rank, pid] : group.workers()) {
        pids += fmt::format(" rank{}={}", rank, pid);
    }
    std::printf("worker group ready: world_size=%d pid0=%d%s\n", args.world_size, static_cast<int>(getpid()),
                pids.c_str());
    std::fflush(stdout);
    if (args.task == "steps") {
        for (uint64_t step = 1; step <= kDemoSteps; ++step) {
            group.broadcast(demo_plan(step));
        }
        K2_CHECK(group.wait_step(kDemoSteps, std::chrono::seconds(30)), "workers did not reach step {}: {}",
                 kDemoSteps, group.failure().value_or("timeout"));
        std::printf("all ranks at step %d\n", static_cast<int>(kDemoSteps));
        std::fflush(stdout);
    }
    if (args.task == "idle") {
        while (g_stop_signal == 0) {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
    }
    group.shutdown(g_stop_signal != 0 ? "driver received a stop signal" : "done");
}

void run_worker(const WorkerArgs& args) {
    WorkerControl control(args.master_addr, args.control_port, args.rank,
                          std::chrono::milliseconds(args.heartbeat_timeout_ms));
    if (args.task == "collectives") {
        run_collectives(args);
    }
    while (g_stop_signal == 0) {
        std::optional<ControlMessage> message = control.next(std::chrono::milliseconds(100));
        if (message && std::holds_alternative<Shutdown>(*message)) {
            return;
        }
        if (message) {
            if (const auto* plan = std::get_if<StepPlan>(&*message)) {
                if (args.task == "steps") {
                    check_demo_plan(*plan);
                }
                control.set_step(plan->step_id);
            }
        }
    }
}

void run(WorkerArgs args, const std::vector<WorkerTask>& extra_tasks) {
    K2_CHECK(args.world_size >= 1, "--world-size must be >= 1, got {}", args.world_size);
    K2_CHECK(args.rank >= 0 && args.rank < args.world_size, "--rank {} outside --world-size {}", args.rank,
             args.world_size);
    K2_CHECK(args.heartbeat_timeout_ms >= 1000, "--heartbeat-timeout-ms must be >= 1000 (heartbeats are every "
             "500 ms), got {}", args.heartbeat_timeout_ms);
    if (args.control_port == 0) {
        args.control_port = args.master_port + 1;
    }
    for (const WorkerTask& task : extra_tasks) {
        if (task.name == args.task) {
            K2_CHECK(args.rank != 0, "--task {} runs on ranks 1..W-1; rank 0 is the process that launched them",
                     args.task);
            task.run(args);
            return;
        }
    }
    std::string names = "idle, collectives, steps";
    for (const WorkerTask& task : extra_tasks) {
        names += ", " + task.name;
    }
    K2_CHECK(args.task == "idle" || args.task == "collectives" || args.task == "steps",
             "--task must be one of {}, got '{}'", names, args.task);
    std::signal(SIGTERM, on_stop_signal);
    std::signal(SIGINT, on_stop_signal);
    if (args.rank == 0) {
        K2_CHECK(args.spawn || args.world_size == 1, "rank 0 needs --spawn to launch ranks 1..{}",
                 args.world_size - 1);
        run_driver(args);
    } else {
        run_worker(args);
    }
}

}  // namespace

void add_worker_command(CLI::App& app, std::vector<WorkerTask> extra_tasks) {
    auto args = std::make_shared<WorkerArgs>();
    CLI::App* cmd = app.add_subcommand("worker", "run one rank of a worker group (internal)");
    cmd->group("");  // hidden from --help: launched by k2 itself
    cmd->add_option("--rank", args->rank, "this process's global rank")->required();
    cmd->add_option("--world-size", args->world_size, "number of ranks")->required();
    cmd->add_option("--master-addr", args->master_addr, "address of rank 0 (rendezvous and control)");
    cmd->add_option("--master-port", args->master_port, "rendezvous port on --master-addr");
    cmd->add_option("--control-port", args->control_port, "ZeroMQ control port (default: master port + 1)");
    cmd->add_option("--task", args->task, "idle | collectives | steps (| model, from k2_executor)");
    cmd->add_option("--heartbeat-timeout-ms", args->heartbeat_timeout_ms,
                    "silence after which a rank (or the driver) counts as hung");
    cmd->add_flag("--spawn", args->spawn, "rank 0: launch ranks 1..W-1 as child processes");
    for (const WorkerTask& task : extra_tasks) {
        if (task.add_options) {
            task.add_options(*cmd);
        }
    }
    cmd->callback([args, tasks = std::move(extra_tasks)] { run(*args, tasks); });
}

}  // namespace k2::dist

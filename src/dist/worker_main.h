// The hidden `k2 worker` subcommand: one rank of a worker group. Rank 0 with --spawn launches ranks 1..W-1 as
// `k2 worker` children (WorkerGroup) and watches them; the others heartbeat to it (WorkerControl). Tasks:
//   idle         join the group and wait for Shutdown (what serving ranks do between steps)
//   collectives  additionally run an all-reduce over Gloo and check it (a launch smoke test)
//   steps        the driver broadcasts StepPlans; workers check each and acknowledge it in their heartbeats
// Lives in k2_dist (not src/cli) so tests can build a small driver with exactly this code.
//   model        (k2_executor, registered through WorkerTask) load this rank's model shard and run the driver's
//                AllocateKv / StepPlan messages until Shutdown: the ranks 1..W-1 of `k2 serve -tp N ...`
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace CLI {
class App;
}  // namespace CLI

namespace k2::dist {

struct WorkerArgs {
    int rank = 0;
    int world_size = 1;
    std::string master_addr = "127.0.0.1";
    int master_port = 29501;
    int control_port = 0;  // resolved to master_port + 1 before a task runs
    std::string task = "idle";
    bool spawn = false;
    int heartbeat_timeout_ms = 5000;
};

// A task implemented above k2_dist (the `model` task needs the model library, which links k2_dist): it adds its
// own flags to the worker subcommand and then runs instead of the built-in loop, on ranks other than 0.
struct WorkerTask {
    std::string name;
    std::function<void(CLI::App& command)> add_options;
    std::function<void(const WorkerArgs& args)> run;
};

void add_worker_command(CLI::App& app, std::vector<WorkerTask> extra_tasks = {});

}  // namespace k2::dist

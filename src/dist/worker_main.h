// The hidden `k2 worker` subcommand: one rank of a worker group. Rank 0 with --spawn launches ranks 1..W-1 as
// `k2 worker` children (WorkerGroup) and watches them; the others heartbeat to it (WorkerControl). Tasks:
//   idle         join the group and wait for Shutdown (what serving ranks do between steps)
//   collectives  additionally run an all-reduce over Gloo and check it (a launch smoke test)
//   steps        the driver broadcasts StepPlans; workers check each and acknowledge it in their heartbeats
// Lives in k2_dist (not src/cli) so tests can build a small driver with exactly this code.
#pragma once

namespace CLI {
class App;
}  // namespace CLI

namespace k2::dist {

void add_worker_command(CLI::App& app);

}  // namespace k2::dist

// `k2 worker` (hidden): one rank of a multi-process group, launched by k2 itself. The command lives in
// k2_dist (dist/worker_main.cpp) so the dist tests can run exactly this code without the whole binary; the
// `model` task (ranks of a parallel `k2 serve`) comes from k2_executor.
#include "cli/commands.h"
#include "dist/worker_main.h"
#include "executor/model_worker.h"

namespace k2::cli {

void add_worker_command(CLI::App& app) { dist::add_worker_command(app, {executor::model_worker_task()}); }

}  // namespace k2::cli

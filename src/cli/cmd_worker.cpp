// `k2 worker` (hidden): one rank of a multi-process group, launched by k2 itself. The command lives in
// k2_dist (dist/worker_main.cpp) so the dist tests can run exactly this code without the whole binary.
#include "cli/commands.h"
#include "dist/worker_main.h"

namespace k2::cli {

void add_worker_command(CLI::App& app) { dist::add_worker_command(app); }

}  // namespace k2::cli

// Each `k2` subcommand lives in its own cmd_<name>.cpp and registers itself on the app here.
// A command's callback throws k2::Error for user errors; main() prints it as one line and exits 1.
#pragma once

#include <CLI/CLI.hpp>

namespace k2::cli {

void add_version_command(CLI::App& app);

}  // namespace k2::cli

#include <cstdio>

#include "cli/commands.h"

namespace k2::cli {

void add_version_command(CLI::App& app) {
    CLI::App* cmd = app.add_subcommand("version", "Print the k2 version");
    cmd->callback([] { std::printf("k2 %s\n", K2_VERSION); });
}

}  // namespace k2::cli

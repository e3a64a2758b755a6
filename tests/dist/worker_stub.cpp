// A minimal program with exactly k2's `worker` subcommand (dist/worker_main.cpp), so the launch tests can
// fork+exec real worker processes without building the whole k2 binary.
#include <cstdio>

#include <CLI/CLI.hpp>

#include "core/error.h"
#include "dist/worker_main.h"

int main(int argc, char** argv) {
    CLI::App app{"k2 worker stub"};
    app.require_subcommand(1);
    k2::dist::add_worker_command(app);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    } catch (const k2::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.message().c_str());
        return 1;
    }
    return 0;
}

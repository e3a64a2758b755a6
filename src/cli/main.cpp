// `k2`: the single entry point. Subcommands are registered from cmd_*.cpp files.
#include <cstdio>
#include <exception>

#include "cli/argv.h"
#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
    CLI::App app{"k2: a native C++/CUDA server for Kimi-K2 and DeepSeek-V3 with FP8 weights", "k2"};
    app.require_subcommand(1);
    k2::cli::add_version_command(app);
    k2::cli::add_bench_command(app);
    k2::cli::add_logits_command(app);
    k2::cli::add_generate_command(app);
    k2::cli::add_inspect_command(app);
    k2::cli::add_synth_command(app);
    k2::cli::add_tokenize_commands(app);
    k2::cli::add_chat_template_command(app);
    k2::cli::add_worker_command(app);
    k2::cli::add_serve_command(app);
    try {
        std::vector<std::string> args = k2::cli::normalize_args(argc, argv);
        app.parse(std::move(args));
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    } catch (const k2::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.message().c_str());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}

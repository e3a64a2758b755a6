// Each `k2` subcommand lives in its own cmd_<name>.cpp and registers itself on the app here.
// A command's callback throws k2::Error for user errors; main() prints it as one line and exits 1.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

namespace k2::cli {

void add_version_command(CLI::App& app);
void add_bench_command(CLI::App& app);     // cmd_bench.cpp
void add_bench_step_command(CLI::App& bench);  // cmd_bench_step.cpp (under `k2 bench`)
void add_logits_command(CLI::App& app);    // cmd_logits.cpp
void add_generate_command(CLI::App& app);  // cmd_generate.cpp
void add_inspect_command(CLI::App& app);   // cmd_inspect.cpp
void add_synth_command(CLI::App& app);     // cmd_synth.cpp
void add_tokenize_commands(CLI::App& app);      // cmd_tokenize.cpp: tokenize + detokenize
void add_chat_template_command(CLI::App& app);  // cmd_chat_template.cpp
void add_worker_command(CLI::App& app);         // cmd_worker.cpp (hidden)
void add_serve_command(CLI::App& app);          // cmd_serve.cpp
// "1,2,3" -> {1, 2, 3}; errors name `flag`. (cmd_logits.cpp)
std::vector<int32_t> parse_token_ids(const std::string& text, const std::string& flag);

}  // namespace k2::cli

// vLLM's multi-letter single-dash aliases (-tp, -pp, -dp, -dcp, ...) are not CLI11 short options;
// normalize_args rewrites them to their long names before parsing.
#pragma once

#include <string>
#include <vector>

namespace k2::cli {

// Returns argv[1..] in CLI11's reverse order (CLI::App::parse(std::vector) expects it reversed).
std::vector<std::string> normalize_args(int argc, char** argv);

}  // namespace k2::cli

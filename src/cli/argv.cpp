#include "cli/argv.h"

#include <algorithm>
#include <map>

namespace k2::cli {

namespace {
const std::map<std::string, std::string> kAliases = {
    {"-tp", "--tensor-parallel-size"},
    {"-pp", "--pipeline-parallel-size"},
    {"-dp", "--data-parallel-size"},
    {"-dpl", "--data-parallel-size-local"},
    {"-dpa", "--data-parallel-address"},
    {"-dpp", "--data-parallel-rpc-port"},
    {"-dpr", "--data-parallel-start-rank"},
    {"-dpn", "--data-parallel-rank"},
    {"-dpb", "--data-parallel-backend"},
    {"-dcp", "--decode-context-parallel-size"},
    {"-asc", "--api-server-count"},
};
}  // namespace

std::vector<std::string> normalize_args(int argc, char** argv) {
    std::vector<std::string> args;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        // "-dcp=8" and "-dcp 8" both work.
        const size_t eq = arg.find('=');
        const std::string head = arg.substr(0, eq);
        const auto it = kAliases.find(head);
        if (it != kAliases.end()) {
            arg = it->second + (eq == std::string::npos ? "" : arg.substr(eq));
        }
        args.push_back(std::move(arg));
    }
    std::reverse(args.begin(), args.end());
    return args;
}

}  // namespace k2::cli

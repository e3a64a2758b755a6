#include "cli/demo_model.h"

#include <system_error>

#include "core/error.h"

namespace k2::cli {

namespace {

// The first `start`, `start/..`, ... that holds rel/config.json; empty when none does.
std::filesystem::path find_upwards(std::filesystem::path start, const std::filesystem::path& rel) {
    std::error_code ec;
    for (std::filesystem::path dir = start; !dir.empty(); dir = dir.parent_path()) {
        if (std::filesystem::exists(dir / rel / "config.json", ec)) {
            return dir / rel;
        }
        if (dir == dir.root_path()) {
            break;
        }
    }
    return {};
}

}  // namespace

std::filesystem::path demo_model_dir() {
    const std::filesystem::path rel{kDemoModelDir};
    std::error_code ec;
    const std::filesystem::path exe_dir = std::filesystem::read_symlink("/proc/self/exe", ec).parent_path();
    if (!ec) {
        if (std::filesystem::path found = find_upwards(exe_dir, rel); !found.empty()) {
            return found;
        }
    }
    const std::filesystem::path cwd = std::filesystem::current_path(ec);
    if (!ec) {
        if (std::filesystem::path found = find_upwards(cwd, rel); !found.empty()) {
            return found;
        }
    }
    K2_FAIL(
        "no MODEL given and the demo model {} (with config.json) was found neither above the k2 executable "
        "({}) nor above the working directory ({}); pass a checkpoint directory or hub id as MODEL",
        rel.string(), exe_dir.string(), cwd.string());
}

}  // namespace k2::cli

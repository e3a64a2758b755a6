// Paths of test fixtures: tests/fixtures/<name> under the source tree (K2_SOURCE_DIR).
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

namespace k2 {

inline std::filesystem::path source_dir() {
    const char* env = std::getenv("K2_SOURCE_DIR");
#ifdef K2_SOURCE_DIR
    return env != nullptr ? std::filesystem::path(env) : std::filesystem::path(K2_SOURCE_DIR);
#else
    return env != nullptr ? std::filesystem::path(env) : std::filesystem::path(".");
#endif
}

inline std::filesystem::path fixture_path(const std::string& name) { return source_dir() / "tests" / "fixtures" / name; }

}  // namespace k2

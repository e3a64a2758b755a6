// The demo model that `k2 serve` and `k2 generate` use when no MODEL is given: models/kimi-k2-demo of the
// source tree, a small Kimi-K2-architecture checkpoint trained on English documentation
// (scripts/demo_model/).
#pragma once

#include <filesystem>
#include <string_view>

namespace k2::cli {

inline constexpr std::string_view kDemoModelDir = "models/kimi-k2-demo";  // relative to the source tree
inline constexpr std::string_view kDemoModelName = "kimi-k2-demo";        // its name in the API

// The demo model's folder: searched upwards from the k2 executable's folder (a build folder sits inside the
// source tree), then from the working directory. Fails naming both places and how to pass a model instead.
std::filesystem::path demo_model_dir();

}  // namespace k2::cli

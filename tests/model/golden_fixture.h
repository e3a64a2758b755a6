// Golden logits of the model fixtures (tests/fixtures/<model>/golden.json + golden_p*_logits.f32), made by
// transformers' DeepseekV3ForCausalLM in float32, and the comparison rule of the acceptance tests.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/model.h"
#include "unit/test_paths.h"

namespace k2::test {

struct GoldenPrompt {
    std::vector<int32_t> ids;
    std::vector<int32_t> logit_positions;  // rows of `logits` hold the logits after these positions
    std::vector<float> logits;             // [logit_positions.size(), vocab]
    std::vector<int32_t> greedy_12;
};

inline std::vector<GoldenPrompt> load_goldens(const std::string& model) {
    const auto dir = fixture_path(model);
    std::ifstream in(dir / "golden.json");
    EXPECT_TRUE(in.good()) << "missing " << (dir / "golden.json");
    const nlohmann::json j = nlohmann::json::parse(in);
    std::vector<GoldenPrompt> out;
    for (const auto& p : j.at("prompts")) {
        GoldenPrompt g;
        g.ids = p.at("ids").get<std::vector<int32_t>>();
        g.logit_positions = p.at("logit_positions").get<std::vector<int32_t>>();
        g.greedy_12 = p.at("greedy_12").get<std::vector<int32_t>>();
        const auto shape = p.at("logits_shape").get<std::vector<int64_t>>();
        g.logits.resize(static_cast<size_t>(shape.at(0) * shape.at(1)));
        std::ifstream f(dir / p.at("logits_file").get<std::string>(), std::ios::binary);
        f.read(reinterpret_cast<char*>(g.logits.data()), static_cast<std::streamsize>(g.logits.size() * sizeof(float)));
        EXPECT_TRUE(f.good()) << "short golden file " << p.at("logits_file");
        out.push_back(std::move(g));
    }
    return out;
}

// max |ours - golden| <= 1e-3 * max |golden| over one row, and every value finite.
inline ::testing::AssertionResult row_matches(const float* ours, const float* golden, int64_t vocab) {
    float max_diff = 0.0f;
    float max_ref = 0.0f;
    for (int64_t i = 0; i < vocab; ++i) {
        if (!std::isfinite(ours[i])) {
            return ::testing::AssertionFailure() << "non-finite logit " << ours[i] << " at column " << i;
        }
        max_diff = std::max(max_diff, std::abs(ours[i] - golden[i]));
        max_ref = std::max(max_ref, std::abs(golden[i]));
    }
    if (max_diff <= 1e-3f * max_ref) {
        return ::testing::AssertionSuccess();
    }
    return ::testing::AssertionFailure() << "max|diff| " << max_diff << " > 1e-3 x max|golden| " << max_ref;
}

}  // namespace k2::test

// k2's port of NumPy's generators against numbers NumPy itself drew (tests/fixtures/numpy_random/: the JSON and
// gen_goldens.py that wrote it; tests/py/bench/test_numpy_goldens.py re-runs the script against the stored file).
// Covers SeedSequence, PCG64's raw output, Generator.integers over every range branch, the random dataset's
// draws in vLLM's order, and the legacy-gamma arrival schedule.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "../unit/test_paths.h"
#include "bench/arrival.h"
#include "bench/dataset.h"
#include "bench/numpy_random.h"
#include "core/error.h"

namespace k2::bench {
namespace {

const nlohmann::json& goldens() {
    static const nlohmann::json doc = [] {
        std::ifstream file(fixture_path("numpy_random") / "numpy_random.json");
        EXPECT_TRUE(file.good()) << "missing tests/fixtures/numpy_random/numpy_random.json";
        return nlohmann::json::parse(file);
    }();
    return doc;
}

// One character per id (decode/encode are the identity), ids 0 and 8 special, as the golden script's tokenizer.
class IdentityTokenizer final : public PromptTokenizer {
public:
    std::vector<int32_t> encode(std::string_view text) const override {
        std::vector<int32_t> ids;
        for (const char c : text)
            ids.push_back(static_cast<int32_t>(c - 'A'));
        return ids;
    }
    std::string decode(std::span<const int32_t> ids) const override {
        std::string text;
        for (const int32_t id : ids)
            text.push_back(static_cast<char>('A' + id));
        return text;
    }
    int32_t vocab_size() const override { return 28; }
    bool is_special(int32_t id) const override { return id == 0 || id == 8; }
    std::string apply_chat_template(const nlohmann::json&) const override { return ""; }
};

TEST(NumpyRandom, SeedSequenceState) {
    for (const nlohmann::json& c : goldens()["seed_sequence"]) {
        EXPECT_EQ(seed_sequence_state(c["seed"].get<uint64_t>(), 8), c["words"].get<std::vector<uint32_t>>())
            << "seed " << c["seed"];
    }
}

TEST(NumpyRandom, Pcg64RawAndIntegers) {
    for (const nlohmann::json& c : goldens()["generator"]) {
        const auto seed = c["seed"].get<uint64_t>();
        NumpyGenerator raw(seed);
        for (const nlohmann::json& value : c["raw_uint64"]) {
            EXPECT_EQ(raw.next_uint64(), std::stoull(value.get<std::string>())) << "seed " << seed;
        }
        NumpyGenerator rng(seed);
        for (const nlohmann::json& draw : c["integers"]) {
            const auto low = draw["low"].get<int64_t>();
            const auto high = draw["high"].get<int64_t>();
            for (const nlohmann::json& expected : draw["values"]) {
                EXPECT_EQ(rng.integers(low, high), expected.get<int64_t>())
                    << "seed " << seed << " integers(" << low << ", " << high << ")";
            }
        }
    }
    NumpyGenerator rng(0);
    EXPECT_THROW(rng.integers(3, 3), k2::Error);
}

TEST(NumpyRandom, RandomDatasetDrawsAsVllm) {
    const IdentityTokenizer tokenizer;
    for (const nlohmann::json& c : goldens()["random_dataset"]) {
        RandomDatasetOptions options;
        options.num_requests = c["num_requests"].get<int>();
        options.input_len = c["input_len"].get<int>();
        options.output_len = c["output_len"].get<int>();
        options.range_ratio = c["range_ratio"].get<double>();
        options.prefix_len = c["prefix_len"].get<int>();
        options.seed = c["seed"].get<uint64_t>();
        const std::vector<SampleRequest> samples = sample_random(tokenizer, options);
        ASSERT_EQ(samples.size(), c["prompts"].size());
        for (size_t i = 0; i < samples.size(); ++i) {
            const auto expected = c["prompts"][i].get<std::vector<int32_t>>();
            EXPECT_EQ(tokenizer.encode(samples[i].prompt), expected) << "seed " << options.seed << " request " << i;
            EXPECT_EQ(samples[i].prompt_len, static_cast<int>(expected.size()));
            EXPECT_EQ(samples[i].expected_output_len, c["output_lens"][i].get<int>());
        }
    }
}

TEST(NumpyRandom, ArrivalScheduleAsVllm) {
    for (const nlohmann::json& c : goldens()["arrivals"]) {
        const auto expected = c["times"].get<std::vector<double>>();
        const std::vector<double> times = arrival_times(c["num_requests"].get<int>(), c["request_rate"].get<double>(),
                                                        c["burstiness"].get<double>(), c["seed"].get<uint64_t>());
        ASSERT_EQ(times.size(), expected.size());
        for (size_t i = 0; i < times.size(); ++i) {
            // Same algorithm and libm; the tolerance only allows a last-bit difference in pow/log.
            EXPECT_NEAR(times[i], expected[i], 1e-12 * (1.0 + expected[i])) << "seed " << c["seed"] << " i " << i;
        }
    }
    EXPECT_THROW(arrival_times(3, 1.0, 1.0, uint64_t{1} << 32), k2::Error);
}

}  // namespace
}  // namespace k2::bench

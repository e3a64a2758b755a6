// Tests of the GPU sampler (backend/cuda/sampling.h) against the host sampler it must agree with
// (engine/sampler.h: greedy_token, draw_with_temperature), on random logits rows with the same uniforms. Greedy rows
// must match bitwise (ties included); a temperature draw may differ only where its target lies within float rounding
// of a token boundary of the CDF (the partial sums are grouped differently), which is checked by recomputing that
// CDF in double. Tokens of skipped rows, and rows' padding columns (which hold a huge logit that would win if read),
// must not be touched. Without a GPU the tests skip with the reason.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <vector>

#include "backend/cuda/device_buffer.h"
#include "backend/cuda/sampling.h"
#include "core/error.h"
#include "engine/sampler.h"
#include "ops_common.h"
#include "unit/sampling_check.h"

namespace k2::ops_test {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kPadding = 1e30f;  // in the stride padding: a read of it would win every argmax
constexpr int32_t kPoison = -1;    // 0xFF bytes

class CudaSampling : public ::testing::Test {
protected:
    void SetUp() override {
        if (cuda::cuda_device_count() == 0) {
            GTEST_SKIP() << "no CUDA device: the CUDA sampling tests need a GPU (they run on the H200 via "
                            "bench/gpu_session6.sh)";
        }
    }
};

struct Row {
    std::vector<float> logits;  // [vocab]
    cuda::SampleMode mode = cuda::SampleMode::Skip;
    double temperature = 1.0;
    double uniform = 0.0;
};

// Runs the kernel on rows of one vocab size (row stride vocab + 8, padding = kPadding); returns the tokens.
std::vector<int32_t> sample_on_gpu(const std::vector<Row>& rows, int64_t vocab) {
    const int64_t stride = vocab + 8;
    std::vector<float> logits(rows.size() * static_cast<size_t>(stride), kPadding);
    std::vector<int32_t> mode;
    std::vector<float> inv_t;
    std::vector<double> uniform;
    for (size_t r = 0; r < rows.size(); ++r) {
        std::copy(rows[r].logits.begin(), rows[r].logits.end(), logits.begin() + static_cast<int64_t>(r) * stride);
        mode.push_back(static_cast<int32_t>(rows[r].mode));
        inv_t.push_back(static_cast<float>(1.0 / rows[r].temperature));  // as the host sampler converts it
        uniform.push_back(rows[r].uniform);
    }
    const auto d_logits = to_device(logits);
    const auto d_mode = to_device(mode);
    const auto d_inv_t = to_device(inv_t);
    const auto d_uniform = to_device(uniform);
    cuda::DeviceBuffer d_tokens(rows.size() * 4);
    d_tokens.fill_bytes(0xFF);
    cuda::SampleRowsParams p;
    p.logits = d_logits.as<float>();
    p.mode = d_mode.as<int32_t>();
    p.inv_temperature = d_inv_t.as<float>();
    p.uniform = d_uniform.as<double>();
    p.tokens = d_tokens.as<int32_t>();
    p.rows = static_cast<int64_t>(rows.size());
    p.vocab = vocab;
    p.stride = stride;
    cuda::launch_sample_rows(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    return to_host<int32_t>(d_tokens, rows.size());
}

std::vector<float> random_logits(int64_t vocab, std::mt19937& rng, float sigma) {
    std::normal_distribution<float> dist(0.0f, sigma);
    std::vector<float> out(static_cast<size_t>(vocab));
    for (float& v : out) {
        v = dist(rng);
    }
    return out;
}

TEST_F(CudaSampling, GreedyMatchesHostIncludingTiesAndMaskedRows) {
    std::mt19937 rng(11);
    for (const int64_t vocab : {int64_t{1}, int64_t{3}, int64_t{1000}, int64_t{1025}, int64_t{163840}}) {
        std::vector<Row> rows;
        for (int r = 0; r < 6; ++r) {
            Row row;
            row.logits = random_logits(vocab, rng, 3.0f);
            row.mode = cuda::SampleMode::Greedy;
            if (r == 1 && vocab > 3) {  // ties: the first index must win
                const int64_t a = vocab / 3;
                row.logits[static_cast<size_t>(a)] = 50.0f;
                row.logits[static_cast<size_t>(vocab - 1)] = 50.0f;
                row.logits[static_cast<size_t>(a + 1)] = 50.0f;
            }
            if (r == 2) {  // every logit masked but the last
                std::fill(row.logits.begin(), row.logits.end(), kNegInf);
                row.logits.back() = -3.0f;
            }
            if (r == 3) {
                row.mode = cuda::SampleMode::Skip;
            }
            rows.push_back(std::move(row));
        }
        const std::vector<int32_t> tokens = sample_on_gpu(rows, vocab);
        for (size_t r = 0; r < rows.size(); ++r) {
            const int32_t expected = rows[r].mode == cuda::SampleMode::Skip ? kPoison : greedy_token(rows[r].logits);
            EXPECT_EQ(tokens[r], expected) << "vocab " << vocab << " row " << r;
        }
    }
}

TEST_F(CudaSampling, TemperatureDrawMatchesHostWithTheSameUniform) {
    std::mt19937 rng(12);
    std::mt19937_64 uniforms(13);
    int near_boundary = 0;
    int checked = 0;
    for (const int64_t vocab : {int64_t{1}, int64_t{3}, int64_t{1000}, int64_t{1025}, int64_t{163840}}) {
        std::vector<Row> rows;
        for (int r = 0; r < 24; ++r) {
            Row row;
            // Flat rows (sigma 1) spread the mass over many tokens; peaked ones (sigma 6) put it on a few.
            row.logits = random_logits(vocab, rng, r % 2 == 0 ? 1.0f : 6.0f);
            row.mode = r == 5 ? cuda::SampleMode::Skip : cuda::SampleMode::Temperature;
            row.temperature = std::array{0.3, 0.7, 1.0, 1.6}[static_cast<size_t>(r % 4)];
            row.uniform = draw_uniform(uniforms);
            if (r == 7) {
                row.uniform = 0.0;  // the first token with weight
            }
            if (r == 9 && vocab > 3) {  // masked tokens weigh nothing, also at the start of the row
                for (int64_t i = 0; i < vocab; i += 3) {
                    row.logits[static_cast<size_t>(i)] = kNegInf;
                }
            }
            rows.push_back(std::move(row));
        }
        const std::vector<int32_t> tokens = sample_on_gpu(rows, vocab);
        for (size_t r = 0; r < rows.size(); ++r) {
            if (rows[r].mode == cuda::SampleMode::Skip) {
                EXPECT_EQ(tokens[r], kPoison) << "a skipped row was written, vocab " << vocab;
                continue;
            }
            const int32_t expected =
                draw_with_temperature(rows[r].logits, static_cast<float>(1.0 / rows[r].temperature), rows[r].uniform);
            ++checked;
            if (tokens[r] == expected) {
                continue;
            }
            const double distance = test::draw_boundary_distance(
                rows[r].logits, static_cast<float>(1.0 / rows[r].temperature), rows[r].uniform, expected);
            EXPECT_LT(distance, test::kDrawBoundaryTolerance)
                << "vocab " << vocab << " row " << r << ": gpu " << tokens[r] << " host " << expected
                << " (not a rounding tie)";
            ++near_boundary;
        }
    }
    // Rounding ties are rare: ~1e-6 of the draws by their measure; a handful would mean the sums are wrong.
    EXPECT_LE(near_boundary, 1) << "of " << checked << " draws";
}

TEST_F(CudaSampling, EmptyBatchIsANoOp) {
    cuda::SampleRowsParams p;  // null pointers: nothing may be read
    p.rows = 0;
    EXPECT_NO_THROW(cuda::launch_sample_rows(p, nullptr));
}

TEST(Sampling, LaunchValidatesBeforeAnyCudaCall) {
    cuda::SampleRowsParams p;
    p.rows = 2;
    p.vocab = 10;
    p.stride = 5;
    EXPECT_THROW(cuda::launch_sample_rows(p, nullptr), Error);  // stride < vocab
    p.stride = 10;
    EXPECT_THROW(cuda::launch_sample_rows(p, nullptr), Error);  // null pointers
}

}  // namespace
}  // namespace k2::ops_test

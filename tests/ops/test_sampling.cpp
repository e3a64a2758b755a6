// Tests of the GPU sampler (backend/cuda/sampling.h) against the host sampler it must agree with
// (engine/sampler.h: greedy_token, draw_with_temperature, draw_sampled), on random logits rows with the same uniforms.
// Greedy rows must match bitwise (ties included); a temperature draw may differ only where its target lies within
// float rounding of a token boundary of the CDF (the partial sums are grouped differently), which is checked by
// recomputing that CDF in double. Filtered rows (min-p / top-k / top-p) may differ only where the uniform lies within
// kFilteredBoundary of a boundary of the host's CDF, or a filter threshold is within kThresholdTolerance of being
// met (kernels/sampling_filter.cuh lists why); every such case is counted and must stay rare. Tokens of skipped
// rows, and rows' padding columns (which hold a huge logit that would win if read), must not be touched. Without a
// GPU the tests skip with the reason. DISABLED_PerfFiltered is the benchmark (bench/sampling_s8.sh).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <span>
#include <vector>

#include "backend/cuda/device_buffer.h"
#include "backend/cuda/sampling.h"
#include "core/error.h"
#include "engine/sampler.h"
#include "engine/sampling_params.h"
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
    int top_k = 0;  // the filters of Filtered rows
    double top_p = 1.0;
    double min_p = 0.0;
};

SamplingParams params_of(const Row& row) {
    SamplingParams params;
    params.temperature = row.temperature;
    params.top_k = row.top_k;
    params.top_p = row.top_p;
    params.min_p = row.min_p;
    return params;
}

// Runs the kernel on rows of one vocab size (row stride vocab + 8, padding = kPadding); returns the tokens.
std::vector<int32_t> sample_on_gpu(const std::vector<Row>& rows, int64_t vocab, bool with_filters = true) {
    const int64_t stride = vocab + 8;
    std::vector<float> logits(rows.size() * static_cast<size_t>(stride), kPadding);
    std::vector<int32_t> mode;
    std::vector<float> inv_t;
    std::vector<double> uniform;
    std::vector<cuda::SampleFilter> filter;
    for (size_t r = 0; r < rows.size(); ++r) {
        std::copy(rows[r].logits.begin(), rows[r].logits.end(), logits.begin() + static_cast<int64_t>(r) * stride);
        mode.push_back(static_cast<int32_t>(rows[r].mode));
        inv_t.push_back(static_cast<float>(1.0 / rows[r].temperature));  // as the host sampler converts it
        uniform.push_back(rows[r].uniform);
        // The engine's row: T as the host softmax divides by it (max(T, kGreedyTemperature)) and the filters.
        filter.push_back(cuda::SampleFilter{std::max(rows[r].temperature, kGreedyTemperature), rows[r].top_p,
                                            rows[r].min_p, rows[r].top_k, 0});
    }
    const auto d_logits = to_device(logits);
    const auto d_mode = to_device(mode);
    const auto d_inv_t = to_device(inv_t);
    const auto d_uniform = to_device(uniform);
    const auto d_filter = to_device(filter);
    cuda::DeviceBuffer d_tokens(rows.size() * 4);
    d_tokens.fill_bytes(0xFF);
    cuda::SampleRowsParams p;
    p.logits = d_logits.as<float>();
    p.mode = d_mode.as<int32_t>();
    p.inv_temperature = d_inv_t.as<float>();
    p.uniform = d_uniform.as<double>();
    p.filter = with_filters ? d_filter.as<cuda::SampleFilter>() : nullptr;
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

// ---- Filtered rows (min-p / top-k / top-p) ----

// A GPU draw may differ from the host's where the uniform lies this close (as a fraction of the kept mass) to a
// boundary of the host's CDF: the device quantizes each weight to 2^-(S+1) (S = 45 at vocab 163,840), which moves
// a boundary by at most vocab * 2^-46 ~ 2.3e-9, and its exp may differ from the host's by an ulp.
constexpr double kFilteredBoundary = 1e-8;
// ... or where a filter threshold is this close (relative) to being met: a weight within rounding of min_p, or a
// top-p prefix sum within rounding of top_p (the host and the device round the normalizing sums differently).
constexpr double kThresholdTolerance = 1e-9;

// How far `uniform` lies from the nearer end of `token`'s interval on the CDF of `probs` (summed one by one in double,
// as draw_token_at does); 1 when the token has no mass.
double filtered_boundary_distance(std::span<const double> probs, double uniform, int32_t token) {
    double cumulative = 0.0;
    for (size_t i = 0; i < probs.size(); ++i) {
        if (probs[i] <= 0.0) {
            continue;
        }
        const double before = cumulative;
        cumulative += probs[i];
        if (static_cast<int32_t>(i) == token) {
            return std::min(std::fabs(uniform - before), std::fabs(cumulative - uniform));
        }
    }
    return 1.0;
}

// Whether a filter threshold of the row is within kThresholdTolerance of being met, so that the host and the device
// may keep different token sets.
bool near_a_filter_threshold(std::span<const float> logits, const SamplingParams& params) {
    const float max_logit = *std::max_element(logits.begin(), logits.end());
    if (params.min_p > 0.0) {
        for (const float v : logits) {
            const double w = std::exp((static_cast<double>(v) - max_logit) / params.temperature);
            if (std::fabs(w - params.min_p) <= kThresholdTolerance * params.min_p) {
                return true;
            }
        }
    }
    if (params.top_p < 1.0) {
        SamplingParams before_top_p = params;
        before_top_p.top_p = 1.0;
        std::vector<double> probs = sampling_distribution(logits, before_top_p);
        std::sort(probs.begin(), probs.end(), std::greater<>());
        double cumulative = 0.0;
        for (const double p : probs) {
            cumulative += p;
            if (std::fabs(cumulative - params.top_p) <= kThresholdTolerance) {
                return true;
            }
            if (cumulative > params.top_p + kThresholdTolerance) {
                break;
            }
        }
    }
    return false;
}

struct FilteredTally {
    int checked = 0;
    int near_boundary = 0;   // mismatches with the uniform within kFilteredBoundary of a CDF boundary
    int near_threshold = 0;  // mismatches in rows with a filter threshold within rounding
};

// Compares the GPU's tokens of Filtered (and Skip) rows with the host sampler's draw_sampled; counts the excused
// mismatches and fails on any other.
void check_filtered(const std::vector<Row>& rows, const std::vector<int32_t>& tokens, int64_t vocab,
                    FilteredTally& tally) {
    for (size_t r = 0; r < rows.size(); ++r) {
        const Row& row = rows[r];
        if (row.mode == cuda::SampleMode::Skip) {
            EXPECT_EQ(tokens[r], kPoison) << "a skipped row was written, vocab " << vocab;
            continue;
        }
        const SamplingParams params = params_of(row);
        const int32_t expected = draw_sampled(row.logits, params, row.uniform);
        ++tally.checked;
        if (tokens[r] == expected) {
            continue;
        }
        const bool plain = row.min_p <= 0.0 && row.top_p >= 1.0 && (row.top_k <= 0 || row.top_k >= vocab);
        const auto inv_t = static_cast<float>(1.0 / row.temperature);
        const double distance =
            plain ? test::draw_boundary_distance(row.logits, inv_t, row.uniform, expected)
                  : filtered_boundary_distance(sampling_distribution(row.logits, params), row.uniform, expected);
        if (distance < (plain ? test::kDrawBoundaryTolerance : kFilteredBoundary)) {
            ++tally.near_boundary;
        } else if (!plain && near_a_filter_threshold(row.logits, params)) {
            ++tally.near_threshold;
        } else {
            ADD_FAILURE() << "vocab " << vocab << " row " << r << " (T " << row.temperature << ", top_k " << row.top_k
                          << ", top_p " << row.top_p << ", min_p " << row.min_p << ", u " << row.uniform << "): gpu "
                          << tokens[r] << ", host " << expected << ", distance " << distance;
        }
    }
}

// The row data of the random filtered cases: plain normal, ties (values on a 0.5 grid: thousands of equal logits at
// the k-th value and at the top-p boundary), masked (-inf, the first token too), peaked.
std::vector<float> filtered_logits(int64_t vocab, int variant, std::mt19937& rng) {
    std::vector<float> logits = random_logits(vocab, rng, variant == 3 ? 6.0f : 2.0f);
    if (variant == 1) {
        for (float& v : logits) {
            v = std::round(v * 1.5f * 2.0f) / 2.0f;
        }
    }
    if (variant == 2 && vocab > 1) {
        std::bernoulli_distribution masked(0.3);
        for (float& v : logits) {
            v = masked(rng) ? kNegInf : v;
        }
        logits[0] = kNegInf;
        logits[static_cast<size_t>(vocab) / 2] = 1.0f;  // one finite logit at least
    }
    return logits;
}

// Every combination of top_k {0, 1, 2, 50, vocab-1, vocab, > vocab} x top_p {0.1, 0.9, 0.95, 1} x min_p {0, 0.05,
// 0.5} on its own random row (four data variants, four temperatures), two Skip rows, three uniforms per row.
FilteredTally check_filtered_vocab(int64_t vocab, uint32_t seed) {
    std::mt19937 rng(seed);
    std::mt19937_64 uniforms(seed + 1);
    const auto v = static_cast<int>(vocab);
    std::vector<Row> rows;
    for (const int top_k : {0, 1, 2, 50, v - 1, v, v + 5}) {
        for (const double top_p : {0.1, 0.9, 0.95, 1.0}) {
            for (const double min_p : {0.0, 0.05, 0.5}) {
                Row row;
                const auto index = static_cast<int>(rows.size());
                row.logits = filtered_logits(vocab, index % 4, rng);
                row.mode = cuda::SampleMode::Filtered;
                row.temperature = std::array{0.3, 0.6, 1.0, 1.5}[static_cast<size_t>(index / 4 % 4)];
                row.top_k = top_k;
                row.top_p = top_p;
                row.min_p = min_p;
                rows.push_back(std::move(row));
            }
        }
    }
    for (int r = 0; r < 2; ++r) {  // Skip rows among them: their poisoned slots stay
        Row row;
        row.logits = random_logits(vocab, rng, 1.0f);
        rows.insert(rows.begin() + 17 * (r + 1), std::move(row));
    }
    FilteredTally tally;
    for (int set = 0; set < 3; ++set) {
        for (size_t r = 0; r < rows.size(); ++r) {
            rows[r].uniform = draw_uniform(uniforms);
            if (set == 0 && r % 7 == 0) {
                rows[r].uniform = 0.0;  // the first kept token
            }
            if (set == 0 && r % 7 == 1) {
                rows[r].uniform = std::nextafter(1.0, 0.0);  // the last kept token
            }
        }
        check_filtered(rows, sample_on_gpu(rows, vocab), vocab, tally);
    }
    return tally;
}

// Excused mismatches are rare (by the tolerances, ~1e-3 of the draws at most); a handful would mean a real bug.
void expect_few_excused(const FilteredTally& tally, int64_t vocab) {
    EXPECT_LE(tally.near_boundary + tally.near_threshold, 2)
        << "vocab " << vocab << ": of " << tally.checked << " draws, " << tally.near_boundary
        << " near a CDF boundary, " << tally.near_threshold << " near a filter threshold";
}

TEST_F(CudaSampling, FilteredDrawMatchesHostAtEdgeVocabs) {
    for (const int64_t vocab : {int64_t{1}, int64_t{3}, int64_t{1000}}) {
        const FilteredTally tally = check_filtered_vocab(vocab, 21 + static_cast<uint32_t>(vocab));
        EXPECT_EQ(tally.checked, 3 * 84) << "vocab " << vocab;
        expect_few_excused(tally, vocab);
    }
}

TEST_F(CudaSampling, FilteredDrawMatchesHostAtKimiVocab) {
    const FilteredTally tally = check_filtered_vocab(163840, 31);
    EXPECT_EQ(tally.checked, 3 * 84);
    expect_few_excused(tally, 163840);
}

// Constructed ties, checked against fixed answers as well as the host: the k-th value shared by many tokens (all
// stay), and a flat row where top-p keeps exactly the lowest ids of the tied tokens.
TEST_F(CudaSampling, FilteredTiesAtTheKthValueAndTheTopPBoundary) {
    constexpr int64_t kVocab = 1000;
    std::mt19937 rng(41);
    // 5 tokens at 4.0 (ids 900..904), 20 at 3.0 (ids 10..29), the rest below -2.
    std::vector<float> stepped = random_logits(kVocab, rng, 0.5f);
    for (float& v : stepped) {
        v = -2.0f - std::fabs(v);
    }
    std::fill(stepped.begin() + 900, stepped.begin() + 905, 4.0f);
    std::fill(stepped.begin() + 10, stepped.begin() + 30, 3.0f);
    const std::vector<float> flat(kVocab, 0.25f);  // top_p 0.1055 keeps ids 0..105: 0.105 < 0.1055 <= 0.106
    std::vector<Row> rows;
    std::vector<std::pair<int32_t, int32_t>> allowed;  // [first, last] token each row may draw
    for (int j = 0; j < 16; ++j) {
        const double u = (j + 0.5) / 16.0;
        Row row;
        row.mode = cuda::SampleMode::Filtered;
        row.uniform = u;
        row.logits = stepped;
        row.top_k = 10;  // the 10th largest is 3.0: all 25 stay
        rows.push_back(row);
        allowed.emplace_back(10, 904);
        row.top_k = 5;  // the 5th largest is 4.0: only those
        rows.push_back(row);
        allowed.emplace_back(900, 904);
        row.logits = flat;
        row.top_k = 0;
        row.top_p = 0.1055;
        rows.push_back(row);
        const auto id = static_cast<int32_t>(u * 106.0);  // uniform over ids 0..105
        allowed.emplace_back(id, id);
    }
    const std::vector<int32_t> tokens = sample_on_gpu(rows, kVocab);
    for (size_t r = 0; r < rows.size(); ++r) {
        const int32_t host = draw_sampled(rows[r].logits, params_of(rows[r]), rows[r].uniform);
        EXPECT_EQ(tokens[r], host) << "row " << r;
        EXPECT_GE(tokens[r], allowed[r].first) << "row " << r;
        EXPECT_LE(tokens[r], allowed[r].second) << "row " << r;
        if (r % 3 == 0) {  // the 25 tied tokens: ids 10..29 or 900..904
            EXPECT_TRUE(tokens[r] < 30 || tokens[r] >= 900) << "row " << r << ": " << tokens[r];
        }
    }
}

// Filtered rows mixed with greedy, temperature and Skip rows in one launch: each keeps its own kernel path; a
// Filtered row without filters (or with a null filter pointer) is drawn as the host draws it, or left untouched.
// Vocab 9,000 takes both paths of the filter kernel: a top-k 40 + top-p row is compacted into shared memory, a flat
// row with thousands of ties (top-k 6,000, top-p 0.95) runs on the row throughout.
TEST_F(CudaSampling, FilteredRowsMixWithOtherModes) {
    constexpr int64_t kVocab = 9000;
    std::mt19937 rng(51);
    std::mt19937_64 uniforms(52);
    std::vector<Row> rows;
    for (int r = 0; r < 16; ++r) {
        Row row;
        row.logits = random_logits(kVocab, rng, 2.0f);
        row.mode = std::array{cuda::SampleMode::Greedy, cuda::SampleMode::Temperature, cuda::SampleMode::Filtered,
                              cuda::SampleMode::Skip}[static_cast<size_t>(r % 4)];
        row.temperature = 0.8;
        row.uniform = draw_uniform(uniforms);
        if (r == 6) {
            row.top_k = static_cast<int>(kVocab);  // no filter: a temperature draw
        } else if (r == 10) {
            row.top_k = 40;
            row.top_p = 0.9;
        } else if (r == 14) {
            for (float& v : row.logits) {
                v = std::round(v * 0.25f * 2.0f) / 2.0f;  // a handful of values, thousands of ties each
            }
            row.top_k = 6000;
            row.top_p = 0.95;
        }
        rows.push_back(std::move(row));
    }
    const std::vector<int32_t> tokens = sample_on_gpu(rows, kVocab);
    FilteredTally tally;
    for (size_t r = 0; r < rows.size(); ++r) {
        if (rows[r].mode == cuda::SampleMode::Greedy) {
            EXPECT_EQ(tokens[r], greedy_token(rows[r].logits)) << "row " << r;
        } else if (rows[r].mode == cuda::SampleMode::Temperature) {
            const auto inv_t = static_cast<float>(1.0 / rows[r].temperature);
            const int32_t host = draw_with_temperature(rows[r].logits, inv_t, rows[r].uniform);
            if (tokens[r] != host) {
                EXPECT_LT(test::draw_boundary_distance(rows[r].logits, inv_t, rows[r].uniform, host),
                          test::kDrawBoundaryTolerance)
                    << "row " << r;
            }
        }
    }
    std::vector<Row> filtered_only;
    std::vector<int32_t> filtered_tokens;
    for (size_t r = 0; r < rows.size(); ++r) {
        if (rows[r].mode == cuda::SampleMode::Filtered || rows[r].mode == cuda::SampleMode::Skip) {
            filtered_only.push_back(rows[r]);
            filtered_tokens.push_back(tokens[r]);
        }
    }
    check_filtered(filtered_only, filtered_tokens, kVocab, tally);
    expect_few_excused(tally, kVocab);
    const std::vector<int32_t> unfiltered = sample_on_gpu(rows, kVocab, false);  // p.filter = nullptr
    for (size_t r = 0; r < rows.size(); ++r) {
        if (rows[r].mode == cuda::SampleMode::Filtered || rows[r].mode == cuda::SampleMode::Skip) {
            EXPECT_EQ(unfiltered[r], kPoison) << "row " << r;
        } else {
            EXPECT_EQ(unfiltered[r], tokens[r]) << "row " << r;
        }
    }
}

// The benchmark (bench/sampling_s8.sh): 1, 16 and 64 rows x 163,840 on the GPU (time_us: CUDA-graph replays)
// against the host sampler's draw_sampled on the same rows, timed in the same run.
TEST_F(CudaSampling, DISABLED_PerfFiltered) {
    constexpr int64_t kVocab = 163840;
    struct Setting {
        const char* name;
        int top_k;
        double top_p;
        cuda::SampleMode mode;
    };
    const std::array settings{Setting{"top_k 50 + top_p 0.95", 50, 0.95, cuda::SampleMode::Filtered},
                              Setting{"top_p 0.95", 0, 0.95, cuda::SampleMode::Filtered},
                              Setting{"temperature only", 0, 1.0, cuda::SampleMode::Temperature}};
    cudaStream_t stream = nullptr;  // time_us captures a graph: not on the legacy default stream
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    const double copy_gbs = copy_rate_gbs(stream);
    std::printf("copy rate %.0f GB/s\n", copy_gbs);
    std::mt19937 rng(61);
    for (const int num_rows : {1, 16, 64}) {
        std::vector<float> logits;  // [num_rows, vocab] N(0, 3), T = 0.6
        std::vector<std::vector<float>> host_rows;
        for (int r = 0; r < num_rows; ++r) {
            host_rows.push_back(random_logits(kVocab, rng, 3.0f));
            logits.insert(logits.end(), host_rows.back().begin(), host_rows.back().end());
        }
        const auto d_logits = to_device(logits);
        // What host sampling adds first: the rows' download (into pinned memory, as a best case).
        float* pinned = nullptr;
        CUDA_CHECK(cudaMallocHost(&pinned, logits.size() * 4));
        CUDA_CHECK(cudaMemcpy(pinned, d_logits.data(), logits.size() * 4, cudaMemcpyDeviceToHost));
        const auto copy_start = std::chrono::steady_clock::now();
        for (int rep = 0; rep < 5; ++rep) {
            CUDA_CHECK(cudaMemcpy(pinned, d_logits.data(), logits.size() * 4, cudaMemcpyDeviceToHost));
        }
        const double download_us =
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - copy_start).count() / 5;
        CUDA_CHECK(cudaFreeHost(pinned));
        std::printf("rows %2d  download of the logits to pinned host memory: %8.1f us\n", num_rows, download_us);
        for (const Setting& setting : settings) {
            std::vector<int32_t> mode(static_cast<size_t>(num_rows), static_cast<int32_t>(setting.mode));
            std::vector<float> inv_t(static_cast<size_t>(num_rows), static_cast<float>(1.0 / 0.6));
            std::vector<double> uniform(static_cast<size_t>(num_rows), 0.37);
            std::vector<cuda::SampleFilter> filter(static_cast<size_t>(num_rows),
                                                   cuda::SampleFilter{0.6, setting.top_p, 0.0, setting.top_k, 0});
            const auto d_mode = to_device(mode);
            const auto d_inv_t = to_device(inv_t);
            const auto d_uniform = to_device(uniform);
            const auto d_filter = to_device(filter);
            cuda::DeviceBuffer d_tokens(static_cast<size_t>(num_rows) * 4);
            cuda::SampleRowsParams p;
            p.logits = d_logits.as<float>();
            p.mode = d_mode.as<int32_t>();
            p.inv_temperature = d_inv_t.as<float>();
            p.uniform = d_uniform.as<double>();
            p.filter = d_filter.as<cuda::SampleFilter>();
            p.tokens = d_tokens.as<int32_t>();
            p.rows = num_rows;
            p.vocab = kVocab;
            p.stride = kVocab;
            const double gpu_us = time_us([&](int, cudaStream_t s) { cuda::launch_sample_rows(p, s); }, stream);
            SamplingParams params;
            params.temperature = 0.6;
            params.top_k = setting.top_k;
            params.top_p = setting.top_p;
            int32_t checksum = 0;
            const auto start = std::chrono::steady_clock::now();
            for (int r = 0; r < num_rows; ++r) {
                checksum += draw_sampled(host_rows[static_cast<size_t>(r)], params, 0.37);
            }
            const double host_us =
                std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
            const double bytes = static_cast<double>(num_rows) * kVocab * 4;  // the logits, read once
            std::printf(
                "rows %2d  %-22s gpu %8.1f us (logits once: %6.1f GB/s, %5.1f%% of copy)  host %9.1f us "
                "(one thread)  host/gpu %6.1fx  [%d]\n",
                num_rows, setting.name, gpu_us, bytes / gpu_us * 1e-3, 100.0 * bytes / gpu_us * 1e-3 / copy_gbs,
                host_us, host_us / gpu_us, checksum);
        }
    }
    CUDA_CHECK(cudaStreamDestroy(stream));
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

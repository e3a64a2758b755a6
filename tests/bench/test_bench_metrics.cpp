// Metric definitions of `k2 bench serve` (reference/vllm.md §4.5) on hand-made traces. Expected values are
// worked out by hand from the timestamps; the NumPy statistics were computed with NumPy 2.x.
#include <gtest/gtest.h>

#include <cmath>

#include "bench/arrival.h"
#include "bench/metrics.h"
#include "core/error.h"

namespace k2::bench {
namespace {

RequestOutput ok(double start, double ttft, std::vector<double> itl, int prompt_len, int output_tokens) {
    RequestOutput out;
    out.success = true;
    out.start_time = start;
    out.ttft = ttft;
    out.itl = std::move(itl);
    out.latency = ttft;
    for (const double gap : out.itl) out.latency += gap;
    out.prompt_len = prompt_len;
    out.output_tokens = output_tokens;
    return out;
}

RequestOutput failed() {
    RequestOutput out;
    out.error = "HTTP 500";
    return out;
}

// r0: 4 tokens, r1: 3 tokens, r2: failed, r3: 1 token.
std::vector<RequestOutput> trace() {
    return {ok(0.0, 0.1, {0.05, 0.05, 0.1}, 10, 4), ok(0.5, 0.2, {0.1, 0.1}, 20, 3), failed(),
            ok(1.2, 0.3, {}, 5, 1)};
}

TEST(BenchNumpy, PercentileMatchesNumpyLinear) {
    const std::vector<double> v = {3.1, 0.2, 7.7, 1.5, 2.2, 9.9, 4.4};
    EXPECT_DOUBLE_EQ(np_percentile(v, 0), 0.2);
    EXPECT_DOUBLE_EQ(np_percentile(v, 25), 1.85);
    EXPECT_DOUBLE_EQ(np_percentile(v, 50), 3.1);
    EXPECT_DOUBLE_EQ(np_percentile(v, 90), 8.580000000000002);
    EXPECT_DOUBLE_EQ(np_percentile(v, 99), 9.767999999999999);
    EXPECT_DOUBLE_EQ(np_percentile(v, 99.9), 9.886800000000001);
    EXPECT_DOUBLE_EQ(np_percentile(v, 100), 9.9);
    EXPECT_DOUBLE_EQ(np_mean(v), 4.142857142857143);
    EXPECT_NEAR(np_std(v), 3.2350125382212944, 1e-12);
    EXPECT_DOUBLE_EQ(np_median(v), 3.1);
    const std::vector<double> w = {0.5, 0.25, 1.0, 2.0};
    EXPECT_DOUBLE_EQ(np_percentile(w, 50), 0.75);
    EXPECT_DOUBLE_EQ(np_percentile(w, 99), 1.9699999999999998);
    EXPECT_DOUBLE_EQ(np_percentile(w, 33.3), 0.49974999999999997);
    EXPECT_EQ(np_percentile({}, 99), 0.0);
    EXPECT_EQ(np_std({}), 0.0);
}

TEST(BenchMetrics, CountsAndThroughput) {
    const std::vector<RequestOutput> outputs = trace();
    const BenchmarkMetrics m = calculate_metrics(outputs, 2.0, {});
    EXPECT_EQ(m.completed, 3);
    EXPECT_EQ(m.failed, 1);
    EXPECT_EQ(m.total_input, 35);
    EXPECT_EQ(m.total_output, 8);
    EXPECT_DOUBLE_EQ(m.request_throughput, 1.5);
    EXPECT_DOUBLE_EQ(m.output_throughput, 4.0);
    EXPECT_DOUBLE_EQ(m.total_token_throughput, 21.5);
    EXPECT_EQ(m.output_lens, (std::vector<int>{4, 3, 0, 1}));
}

TEST(BenchMetrics, TtftTpotItlE2el) {
    MetricsOptions options;
    options.percentiles = {90, 99};
    const BenchmarkMetrics m = calculate_metrics(trace(), 2.0, options);
    const MetricStats& ttft = m.stats.at(Metric::kTtft);
    EXPECT_NEAR(ttft.mean_ms, 200.0, 1e-9);
    EXPECT_NEAR(ttft.median_ms, 200.0, 1e-9);
    EXPECT_NEAR(ttft.std_ms, 81.6496580927726, 1e-9);
    ASSERT_EQ(ttft.percentiles_ms.size(), 2u);
    EXPECT_EQ(ttft.percentiles_ms[0].first, 90.0);
    EXPECT_NEAR(ttft.percentiles_ms[0].second, 280.0, 1e-9);
    EXPECT_NEAR(ttft.percentiles_ms[1].second, 298.0, 1e-9);
    // TPOT = (latency - ttft) / (tokens - 1): r0 0.2/3, r1 0.2/2; r3 (1 token) is left out.
    const MetricStats& tpot = m.stats.at(Metric::kTpot);
    EXPECT_NEAR(tpot.mean_ms, 83.33333333333334, 1e-9);
    EXPECT_NEAR(tpot.median_ms, 83.33333333333334, 1e-9);
    EXPECT_NEAR(tpot.percentiles_ms[1].second, 99.66666666666667, 1e-9);
    // ITL pools every gap of every request: 50, 50, 100, 100, 100 ms.
    const MetricStats& itl = m.stats.at(Metric::kItl);
    EXPECT_NEAR(itl.mean_ms, 80.0, 1e-9);
    EXPECT_NEAR(itl.median_ms, 100.0, 1e-9);
    EXPECT_NEAR(itl.percentiles_ms[1].second, 100.0, 1e-9);
    const MetricStats& e2el = m.stats.at(Metric::kE2el);
    EXPECT_NEAR(e2el.mean_ms, 1000.0 / 3.0, 1e-9);
    EXPECT_NEAR(e2el.median_ms, 300.0, 1e-9);
}

TEST(BenchMetrics, PeakOutputThroughputUsesOneSecondBins) {
    // Token times: r0 0.1 0.15 0.2 0.3, r1 0.7 0.8 0.9 (bin 0: 7 tokens), r3 1.5 (bin 1).
    EXPECT_DOUBLE_EQ(calculate_metrics(trace(), 2.0, {}).max_output_tokens_per_s, 7.0);
    // Two requests whose tokens straddle a bin edge: bins 0,1,2 get 3,3,1 tokens.
    const std::vector<RequestOutput> edge = {ok(0.0, 0.5, {0.25, 0.5, 0.5}, 1, 4), ok(0.25, 0.5, {1.0, 0.5}, 1, 3)};
    EXPECT_DOUBLE_EQ(peak_output_tokens_per_s(edge), 3.0);
    EXPECT_DOUBLE_EQ(peak_output_tokens_per_s(std::vector<RequestOutput>{failed()}), 0.0);
}

TEST(BenchMetrics, PeakConcurrencySweepLine) {
    EXPECT_EQ(calculate_metrics(trace(), 2.0, {}).max_concurrent_requests, 1);
    // [0,1) [0.5,1.5) [1,2): the first ends exactly when the third starts, so at most 2 overlap.
    const std::vector<RequestOutput> chain = {ok(0.0, 1.0, {}, 1, 1), ok(0.5, 1.0, {}, 1, 1), ok(1.0, 1.0, {}, 1, 1)};
    EXPECT_EQ(peak_concurrent_requests(chain), 2);
    const std::vector<RequestOutput> burst = {ok(0.0, 0.25, {0.5}, 1, 2), ok(0.0, 0.5, {0.25}, 1, 2),
                                              ok(0.0, 0.75, {}, 1, 1), failed()};
    EXPECT_EQ(peak_concurrent_requests(burst), 3);
}

TEST(BenchMetrics, Goodput) {
    MetricsOptions options;
    options.goodput_slo_ms = {{"ttft", 250.0}};
    EXPECT_DOUBLE_EQ(calculate_metrics(trace(), 2.0, options).request_goodput, 1.0);  // r0, r1
    // TPOT of the 1-token r3 counts as 0; r1's 100 ms TPOT breaks a 70 ms SLO.
    options.goodput_slo_ms = {{"tpot", 70.0}};
    EXPECT_DOUBLE_EQ(calculate_metrics(trace(), 2.0, options).request_goodput, 1.0);  // r0, r3
    options.goodput_slo_ms = {{"ttft", 250.0}, {"tpot", 70.0}};
    EXPECT_DOUBLE_EQ(calculate_metrics(trace(), 2.0, options).request_goodput, 0.5);  // r0
    options.goodput_slo_ms = {{"e2el", 350.0}};
    EXPECT_DOUBLE_EQ(calculate_metrics(trace(), 2.0, options).request_goodput, 1.0);  // r0, r3
}

TEST(BenchMetrics, OutputLengthWithoutUsage) {
    std::vector<RequestOutput> outputs = {ok(0.0, 0.1, {0.1, 0.1}, 3, -1)};
    outputs[0].generated_text = "abcde";
    // No tokenizer: one token per event.
    EXPECT_EQ(calculate_metrics(outputs, 1.0, {}).total_output, 3);
    MetricsOptions options;
    options.count_tokens = [](const std::string& text) { return static_cast<int>(text.size()); };
    const BenchmarkMetrics m = calculate_metrics(outputs, 1.0, options);
    EXPECT_EQ(m.total_output, 5);
    EXPECT_NEAR(m.stats.at(Metric::kTpot).mean_ms, 50.0, 1e-9);  // 0.2 s over 4 tokens
}

TEST(BenchMetrics, NoSuccessIsAllZero) {
    const std::vector<RequestOutput> outputs = {failed(), failed()};
    const BenchmarkMetrics m = calculate_metrics(outputs, 1.0, {});
    EXPECT_EQ(m.completed, 0);
    EXPECT_EQ(m.failed, 2);
    EXPECT_EQ(m.stats.at(Metric::kTtft).mean_ms, 0.0);
    EXPECT_EQ(m.max_concurrent_requests, 0);
    EXPECT_THROW(calculate_metrics(outputs, 0.0, {}), k2::Error);
}

TEST(BenchArrival, InfiniteRateSendsAllAtOnce) {
    const std::vector<double> times = arrival_times(5, INFINITY, 1.0, 0);
    EXPECT_EQ(times, std::vector<double>(5, 0.0));
}

TEST(BenchArrival, RescaledToExactSpanAndSeeded) {
    const std::vector<double> times = arrival_times(200, 4.0, 1.0, 7);
    ASSERT_EQ(times.size(), 200u);
    EXPECT_NEAR(times.back(), 50.0, 1e-9);  // N / rate
    EXPECT_TRUE(std::is_sorted(times.begin(), times.end()));
    EXPECT_GT(times.front(), 0.0);  // the first request also waits its gap
    EXPECT_EQ(times, arrival_times(200, 4.0, 1.0, 7));
    EXPECT_NE(times, arrival_times(200, 4.0, 1.0, 8));
    // Burstiness inf: a constant gap of 1/rate.
    const std::vector<double> regular = arrival_times(4, 2.0, INFINITY, 0);
    EXPECT_NEAR(regular[0], 0.5, 1e-12);
    EXPECT_NEAR(regular[3], 2.0, 1e-12);
    // Gamma(shape 1) gaps have a coefficient of variation near 1, shape 16 near 1/4.
    const auto cv = [](const std::vector<double>& t) {
        std::vector<double> gaps = {t[0]};
        for (size_t i = 1; i < t.size(); ++i) gaps.push_back(t[i] - t[i - 1]);
        return np_std(gaps) / np_mean(gaps);
    };
    EXPECT_NEAR(cv(arrival_times(4000, 10.0, 1.0, 1)), 1.0, 0.1);
    EXPECT_NEAR(cv(arrival_times(4000, 10.0, 16.0, 1)), 0.25, 0.05);
    EXPECT_THROW(arrival_times(3, 0.0, 1.0, 0), k2::Error);
}

}  // namespace
}  // namespace k2::bench

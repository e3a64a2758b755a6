// Metrics of `k2 bench serve`, defined exactly as vLLM's `calculate_metrics` (reference/vllm.md §4.5).
// Everything here is a pure function of the per-request traces, so it is unit-tested on hand-made timestamps.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace k2::bench {

// One request's measurements (vLLM's RequestFuncOutput). Times are seconds on the steady clock, relative to
// the benchmark start.
struct RequestOutput {
    bool success = false;
    double start_time = 0.0;  // just before the POST was sent
    double ttft = 0.0;        // first token event - start_time
    double latency = 0.0;     // last token event - start_time
    std::vector<double> itl;  // gaps between consecutive token events (one per event after the first)
    int prompt_len = 0;
    int output_tokens = -1;  // usage.completion_tokens; -1 when the server sent no usage
    std::string generated_text;
    std::string error;
};

// The per-request latency metrics, in vLLM's fixed print order.
enum class Metric { kTtft, kTpot, kItl, kE2el };
inline constexpr std::array<Metric, 4> kAllMetrics = {Metric::kTtft, Metric::kTpot, Metric::kItl, Metric::kE2el};

const char* metric_key(Metric metric);     // "ttft", "tpot", "itl", "e2el"
const char* metric_label(Metric metric);   // "TTFT", "TPOT", "ITL", "E2EL"
const char* metric_header(Metric metric);  // "Time to First Token", ...
Metric parse_metric(const std::string& key);  // throws k2::Error naming --percentile-metrics

struct MetricStats {
    double mean_ms = 0.0;
    double median_ms = 0.0;
    double std_ms = 0.0;
    std::vector<std::pair<double, double>> percentiles_ms;  // (percentile, value)
};

struct BenchmarkMetrics {
    int completed = 0;
    int failed = 0;
    int64_t total_input = 0;
    int64_t total_output = 0;
    double request_throughput = 0.0;
    double request_goodput = 0.0;
    double output_throughput = 0.0;
    double total_token_throughput = 0.0;
    double max_output_tokens_per_s = 0.0;
    int max_concurrent_requests = 0;
    std::map<Metric, MetricStats> stats;  // every metric, selected or not
    std::vector<int> output_lens;         // per request; 0 for a failed one
};

// NumPy's np.mean / np.median / np.std (population) / np.percentile (linear interpolation).
// An empty sample behaves like vLLM's `np.f(x or 0)`: every statistic is 0.
double np_mean(std::span<const double> values);
double np_std(std::span<const double> values);
double np_percentile(std::span<const double> values, double percentile);
inline double np_median(std::span<const double> values) { return np_percentile(values, 50.0); }

// Tokens per 1-second bin from the earliest successful start; the token times are start + ttft, then + each
// itl (one token per chunk, as vLLM assumes). Returns the busiest bin's count.
double peak_output_tokens_per_s(std::span<const RequestOutput> outputs);
// Exact sweep-line maximum of overlapping [start, start + latency) intervals of successful requests; an end
// at the same instant as a start is processed first.
int peak_concurrent_requests(std::span<const RequestOutput> outputs);

struct MetricsOptions {
    std::vector<double> percentiles = {99.0};
    std::map<std::string, double> goodput_slo_ms;  // keys ttft, tpot, e2el
    // Counts the tokens of a generated text when the server reported no usage; null: count token events.
    std::function<int(const std::string&)> count_tokens;
};

BenchmarkMetrics calculate_metrics(std::span<const RequestOutput> outputs, double duration_s,
                                   const MetricsOptions& options);

}  // namespace k2::bench

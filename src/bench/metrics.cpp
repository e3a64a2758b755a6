#include "bench/metrics.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace k2::bench {

const char* metric_key(Metric metric) {
    switch (metric) {
        case Metric::kTtft: return "ttft";
        case Metric::kTpot: return "tpot";
        case Metric::kItl: return "itl";
        case Metric::kE2el: return "e2el";
    }
    return "";
}

const char* metric_label(Metric metric) {
    switch (metric) {
        case Metric::kTtft: return "TTFT";
        case Metric::kTpot: return "TPOT";
        case Metric::kItl: return "ITL";
        case Metric::kE2el: return "E2EL";
    }
    return "";
}

const char* metric_header(Metric metric) {
    switch (metric) {
        case Metric::kTtft: return "Time to First Token";
        case Metric::kTpot: return "Time per Output Token (excl. 1st token)";
        case Metric::kItl: return "Inter-token Latency";
        case Metric::kE2el: return "End-to-end Latency";
    }
    return "";
}

Metric parse_metric(const std::string& key) {
    for (const Metric metric : kAllMetrics) {
        if (key == metric_key(metric)) {
            return metric;
        }
    }
    K2_FAIL("--percentile-metrics: unknown metric '{}' (expected ttft, tpot, itl or e2el)", key);
}

double np_mean(std::span<const double> values) {
    if (values.empty()) {
        return 0.0;
    }
    double sum = 0.0;
    for (const double value : values) {
        sum += value;
    }
    return sum / static_cast<double>(values.size());
}

double np_std(std::span<const double> values) {
    if (values.empty()) {
        return 0.0;
    }
    const double mean = np_mean(values);
    double sum_sq = 0.0;
    for (const double value : values) {
        sum_sq += (value - mean) * (value - mean);
    }
    return std::sqrt(sum_sq / static_cast<double>(values.size()));
}

double np_percentile(std::span<const double> values, double percentile) {
    if (values.empty()) {
        return 0.0;
    }
    std::vector<double> sorted(values.begin(), values.end());
    std::sort(sorted.begin(), sorted.end());
    const double n = static_cast<double>(sorted.size());
    // NumPy's "linear" method: virtual index n*q + (1 - q) - 1, then its _lerp, which interpolates from the
    // upper neighbour when t >= 0.5 (so the result is exact at both ends).
    const double q = percentile / 100.0;
    const double index = std::clamp(n * q + (1.0 - q) - 1.0, 0.0, n - 1.0);
    const auto lo = static_cast<size_t>(std::floor(index));
    const size_t hi = std::min(lo + 1, sorted.size() - 1);
    const double t = index - static_cast<double>(lo);
    const double a = sorted[lo];
    const double b = sorted[hi];
    const double diff = b - a;
    return t >= 0.5 ? b - diff * (1.0 - t) : a + diff * t;
}

namespace {

double np_median_exact(std::span<const double> values) {
    if (values.empty()) {
        return 0.0;
    }
    // np.median averages the two middle elements of an even-sized sample.
    std::vector<double> sorted(values.begin(), values.end());
    std::sort(sorted.begin(), sorted.end());
    const size_t mid = sorted.size() / 2;
    return sorted.size() % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2.0;
}

MetricStats make_stats(std::span<const double> values_s, std::span<const double> percentiles) {
    MetricStats stats;
    stats.mean_ms = np_mean(values_s) * 1000.0;
    stats.std_ms = np_std(values_s) * 1000.0;
    stats.median_ms = np_median_exact(values_s) * 1000.0;
    for (const double p : percentiles) {
        stats.percentiles_ms.emplace_back(p, np_percentile(values_s, p) * 1000.0);
    }
    return stats;
}

}  // namespace

double peak_output_tokens_per_s(std::span<const RequestOutput> outputs) {
    double min_start = 0.0;
    double max_end = 0.0;
    bool any = false;
    for (const RequestOutput& output : outputs) {
        if (!output.success) {
            continue;
        }
        min_start = any ? std::min(min_start, output.start_time) : output.start_time;
        max_end = any ? std::max(max_end, output.start_time + output.latency) : output.start_time + output.latency;
        any = true;
    }
    if (!any) {
        return 0.0;
    }
    const auto num_bins = static_cast<int64_t>(std::ceil(max_end - min_start)) + 1;
    std::vector<double> tokens_per_bin(static_cast<size_t>(num_bins), 0.0);
    const auto add_token = [&](double token_time) {
        // int() in Python truncates toward zero, as the cast does.
        const auto bin = static_cast<int64_t>(token_time - min_start);
        if (bin >= 0 && bin < num_bins) {
            tokens_per_bin[static_cast<size_t>(bin)] += 1.0;
        }
    };
    for (const RequestOutput& output : outputs) {
        if (!output.success) {
            continue;
        }
        double token_time = output.start_time + output.ttft;
        add_token(token_time);
        for (const double gap : output.itl) {
            token_time += gap;
            add_token(token_time);
        }
    }
    return *std::max_element(tokens_per_bin.begin(), tokens_per_bin.end());
}

int peak_concurrent_requests(std::span<const RequestOutput> outputs) {
    // (time, delta): ends (-1) sort before starts (+1) at the same instant, so [a, b) and [b, c) never overlap.
    std::vector<std::pair<double, int>> events;
    for (const RequestOutput& output : outputs) {
        if (output.success) {
            events.emplace_back(output.start_time, 1);
            events.emplace_back(output.start_time + output.latency, -1);
        }
    }
    std::sort(events.begin(), events.end());
    int current = 0;
    int peak = 0;
    for (const auto& [time, delta] : events) {
        current += delta;
        peak = std::max(peak, current);
    }
    return peak;
}

namespace {

// vLLM's goodput: a completed request is good when every given SLO (ms) holds; TPOT of a 1-token output is 0.
int count_good(const std::map<std::string, double>& slo_ms, std::span<const double> ttfts,
               std::span<const double> all_tpots, std::span<const double> e2els) {
    int good = 0;
    for (size_t i = 0; i < ttfts.size(); ++i) {
        bool is_good = true;
        for (const auto& [key, limit_ms] : slo_ms) {
            const double limit_s = limit_ms / 1000.0;
            const double value = key == "ttft" ? ttfts[i] : key == "tpot" ? all_tpots[i] : e2els[i];
            is_good = is_good && value <= limit_s;
        }
        good += is_good ? 1 : 0;
    }
    return good;
}

}  // namespace

BenchmarkMetrics calculate_metrics(std::span<const RequestOutput> outputs, double duration_s,
                                   const MetricsOptions& options) {
    K2_CHECK(duration_s > 0.0, "benchmark duration must be positive, got {}", duration_s);
    BenchmarkMetrics metrics;
    std::vector<double> ttfts, tpots, all_tpots, itls, e2els;
    for (const RequestOutput& output : outputs) {
        if (!output.success) {
            metrics.output_lens.push_back(0);
            ++metrics.failed;
            continue;
        }
        int output_len = output.output_tokens;
        // vLLM re-tokenizes the text when usage is missing (`if not output_len`, so 0 counts as missing too).
        if (output_len <= 0) {
            output_len = options.count_tokens ? options.count_tokens(output.generated_text)
                                              : static_cast<int>(output.itl.size()) + 1;
        }
        metrics.output_lens.push_back(output_len);
        metrics.total_input += output.prompt_len;
        metrics.total_output += output_len;
        double tpot = 0.0;
        if (output_len > 1) {
            tpot = (output.latency - output.ttft) / static_cast<double>(output_len - 1);
            tpots.push_back(tpot);
        }
        all_tpots.push_back(tpot);
        itls.insert(itls.end(), output.itl.begin(), output.itl.end());
        ttfts.push_back(output.ttft);
        e2els.push_back(output.latency);
        ++metrics.completed;
    }
    const int good = options.goodput_slo_ms.empty() ? 0 : count_good(options.goodput_slo_ms, ttfts, all_tpots, e2els);
    metrics.request_throughput = metrics.completed / duration_s;
    metrics.request_goodput = good / duration_s;
    metrics.output_throughput = static_cast<double>(metrics.total_output) / duration_s;
    metrics.total_token_throughput = static_cast<double>(metrics.total_input + metrics.total_output) / duration_s;
    metrics.max_output_tokens_per_s = peak_output_tokens_per_s(outputs);
    metrics.max_concurrent_requests = peak_concurrent_requests(outputs);
    metrics.stats[Metric::kTtft] = make_stats(ttfts, options.percentiles);
    metrics.stats[Metric::kTpot] = make_stats(tpots, options.percentiles);
    metrics.stats[Metric::kItl] = make_stats(itls, options.percentiles);
    metrics.stats[Metric::kE2el] = make_stats(e2els, options.percentiles);
    return metrics;
}

}  // namespace k2::bench

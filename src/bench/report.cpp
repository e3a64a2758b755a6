#include "bench/report.h"

#include <cmath>
#include <fmt/format.h>

#include "core/error.h"

namespace k2::bench {

namespace {

// Python's "{:<40} {:<10}" / "{:<40} {:<10.2f}" lines, trailing padding included.
void add_int_line(std::string& out, const std::string& label, int64_t value) {
    out += fmt::format("{:<40} {:<10}\n", label, value);
}

void add_float_line(std::string& out, const std::string& label, double value) {
    out += fmt::format("{:<40} {:<10.2f}\n", label, value);
}

std::string percentile_word(double p) {
    // str(int(p)) when integral, else str(p): "99", "99.9".
    return p == std::floor(p) ? fmt::format("{}", static_cast<int64_t>(p)) : python_float_str(p);
}

bool is_selected(const ReportOptions& options, Metric metric) {
    for (const Metric selected : options.selected_metrics) {
        if (selected == metric) {
            return true;
        }
    }
    return false;
}

}  // namespace

std::string python_float_str(double value) {
    if (std::isinf(value)) {
        return value > 0 ? "inf" : "-inf";
    }
    if (std::isnan(value)) {
        return "nan";
    }
    std::string text = fmt::format("{}", value);
    if (text.find_first_of(".eEn") == std::string::npos) {
        text += ".0";
    }
    return text;
}

std::string format_result_table(const BenchmarkMetrics& metrics, const ReportOptions& options) {
    std::string out = fmt::format("{:=^50}\n", " Serving Benchmark Result ");
    add_int_line(out, "Successful requests:", metrics.completed);
    add_int_line(out, "Failed requests:", metrics.failed);
    if (options.max_concurrency) {
        add_int_line(out, "Maximum request concurrency:", *options.max_concurrency);
    }
    if (!std::isinf(options.request_rate)) {
        add_float_line(out, "Request rate configured (RPS):", options.request_rate);
    }
    add_float_line(out, "Benchmark duration (s):", options.duration_s);
    add_int_line(out, "Total input tokens:", metrics.total_input);
    add_int_line(out, "Total generated tokens:", metrics.total_output);
    add_float_line(out, "Request throughput (req/s):", metrics.request_throughput);
    if (options.has_goodput) {
        add_float_line(out, "Request goodput (req/s):", metrics.request_goodput);
    }
    add_float_line(out, "Output token throughput (tok/s):", metrics.output_throughput);
    add_float_line(out, "Peak output token throughput (tok/s):", metrics.max_output_tokens_per_s);
    add_float_line(out, "Peak concurrent requests:", metrics.max_concurrent_requests);
    add_float_line(out, "Total token throughput (tok/s):", metrics.total_token_throughput);
    for (const Metric metric : kAllMetrics) {
        if (!is_selected(options, metric)) {
            continue;
        }
        const MetricStats& stats = metrics.stats.at(metric);
        const std::string name = metric_label(metric);
        out += fmt::format("{:-^50}\n", metric_header(metric));
        add_float_line(out, fmt::format("Mean {} (ms):", name), stats.mean_ms);
        add_float_line(out, fmt::format("Median {} (ms):", name), stats.median_ms);
        for (const auto& [p, value] : stats.percentiles_ms) {
            add_float_line(out, fmt::format("P{} {} (ms):", percentile_word(p), name), value);
        }
    }
    out += std::string(50, '=') + "\n";
    return out;
}

nlohmann::ordered_json benchmark_result_json(const BenchmarkMetrics& metrics, const ReportOptions& options,
                                             std::span<const RequestOutput> outputs, bool detailed) {
    nlohmann::ordered_json result;
    result["duration"] = options.duration_s;
    result["completed"] = metrics.completed;
    result["failed"] = metrics.failed;
    result["total_input_tokens"] = metrics.total_input;
    result["total_output_tokens"] = metrics.total_output;
    result["request_throughput"] = metrics.request_throughput;
    result["request_goodput"] = options.has_goodput ? nlohmann::ordered_json(metrics.request_goodput) : nullptr;
    result["output_throughput"] = metrics.output_throughput;
    result["total_token_throughput"] = metrics.total_token_throughput;
    if (detailed) {
        nlohmann::ordered_json input_lens = nlohmann::ordered_json::array();
        nlohmann::ordered_json ttfts = nlohmann::ordered_json::array();
        nlohmann::ordered_json itls = nlohmann::ordered_json::array();
        nlohmann::ordered_json texts = nlohmann::ordered_json::array();
        nlohmann::ordered_json errors = nlohmann::ordered_json::array();
        nlohmann::ordered_json latencies = nlohmann::ordered_json::array();
        nlohmann::ordered_json start_times = nlohmann::ordered_json::array();
        for (const RequestOutput& output : outputs) {
            input_lens.push_back(output.prompt_len);
            ttfts.push_back(output.ttft);
            itls.push_back(output.itl);
            texts.push_back(output.generated_text);
            errors.push_back(output.error);
            latencies.push_back(output.latency);
            start_times.push_back(output.start_time);
        }
        result["input_lens"] = std::move(input_lens);
        result["output_lens"] = metrics.output_lens;
        result["ttfts"] = std::move(ttfts);
        result["itls"] = std::move(itls);
        result["generated_texts"] = std::move(texts);
        result["errors"] = std::move(errors);
        result["latencies"] = std::move(latencies);
        result["start_times"] = std::move(start_times);
    }
    result["max_output_tokens_per_s"] = metrics.max_output_tokens_per_s;
    result["max_concurrent_requests"] = metrics.max_concurrent_requests;
    for (const Metric metric : kAllMetrics) {
        if (!is_selected(options, metric)) {
            continue;
        }
        const MetricStats& stats = metrics.stats.at(metric);
        const std::string key = metric_key(metric);
        result["mean_" + key + "_ms"] = stats.mean_ms;
        result["median_" + key + "_ms"] = stats.median_ms;
        result["std_" + key + "_ms"] = stats.std_ms;
        for (const auto& [p, value] : stats.percentiles_ms) {
            result["p" + percentile_word(p) + "_" + key + "_ms"] = value;
        }
    }
    return result;
}

nlohmann::ordered_json saved_result_json(const SavedResultInfo& info, const ReportOptions& options,
                                         const nlohmann::ordered_json& benchmark_result) {
    nlohmann::ordered_json doc;
    doc["date"] = info.date;
    // Newer vLLM writes endpoint_type, older backend; both are kept so either reader finds its key.
    doc["endpoint_type"] = info.backend;
    doc["backend"] = info.backend;
    doc["label"] = info.label ? nlohmann::ordered_json(*info.label) : nullptr;
    doc["model_id"] = info.model_id;
    doc["tokenizer_id"] = info.tokenizer_id;
    doc["num_prompts"] = info.num_prompts;
    for (const std::string& item : info.metadata) {
        const size_t eq = item.find('=');
        K2_CHECK(eq != std::string::npos, "--metadata: invalid item '{}', expected KEY=VALUE", item);
        const auto trim = [](std::string text) {
            const size_t begin = text.find_first_not_of(" \t");
            const size_t end = text.find_last_not_of(" \t");
            return begin == std::string::npos ? std::string() : text.substr(begin, end - begin + 1);
        };
        doc[trim(item.substr(0, eq))] = trim(item.substr(eq + 1));
    }
    doc["request_rate"] =
        std::isinf(options.request_rate) ? nlohmann::ordered_json("inf") : nlohmann::ordered_json(options.request_rate);
    doc["burstiness"] = info.burstiness;
    doc["max_concurrency"] =
        options.max_concurrency ? nlohmann::ordered_json(*options.max_concurrency) : nlohmann::ordered_json(nullptr);
    for (const auto& [key, value] : benchmark_result.items()) {
        doc[key] = value;
    }
    return doc;
}

std::string default_result_filename(const SavedResultInfo& info, const ReportOptions& options) {
    const std::string label = info.label && !info.label->empty() ? *info.label : info.backend;
    const size_t slash = info.model_id.find_last_of('/');
    const std::string base_model_id = slash == std::string::npos ? info.model_id : info.model_id.substr(slash + 1);
    const std::string concurrency =
        options.max_concurrency ? fmt::format("-concurrency{}", *options.max_concurrency) : std::string();
    return fmt::format("{}-{}qps{}-{}-{}.json", label, python_float_str(options.request_rate), concurrency,
                       base_model_id, info.date);
}

}  // namespace k2::bench

// The printed result block and the saved JSON of `k2 bench serve`, byte for byte in vLLM's shapes
// (reference/vllm.md §4.6 and §4.7).
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "bench/metrics.h"

namespace k2::bench {

struct ReportOptions {
    double duration_s = 0.0;
    double request_rate = 0.0;  // +inf: not printed
    std::optional<int> max_concurrency;
    bool has_goodput = false;
    std::vector<Metric> selected_metrics = {Metric::kTtft, Metric::kTpot, Metric::kItl};
};

// "============ Serving Benchmark Result ============" ... "=====" (50 wide), one "label value" line each.
std::string format_result_table(const BenchmarkMetrics& metrics, const ReportOptions& options);

// Python's str(float): shortest round-trip digits, "1.0" for integral values, "inf".
std::string python_float_str(double value);

// vLLM's `benchmark()` result dict: duration ... max_concurrent_requests, then mean/median/std/pXX per
// selected metric; with `detailed` also the per-request arrays.
nlohmann::ordered_json benchmark_result_json(const BenchmarkMetrics& metrics, const ReportOptions& options,
                                             std::span<const RequestOutput> outputs, bool detailed);

struct SavedResultInfo {
    std::string date;  // YYYYMMDD-HHMMSS, local time
    std::string backend;
    std::optional<std::string> label;
    std::string model_id;
    std::string tokenizer_id;
    int num_prompts = 0;
    std::vector<std::string> metadata;  // KEY=VALUE
    double burstiness = 1.0;
};

// The whole saved document: date, endpoint_type, backend, label, model_id, ... then benchmark_result.
nlohmann::ordered_json saved_result_json(const SavedResultInfo& info, const ReportOptions& options,
                                         const nlohmann::ordered_json& benchmark_result);

// "{label or backend}-{rate}qps[-concurrency{N}]-{model basename}-{date}.json"
std::string default_result_filename(const SavedResultInfo& info, const ReportOptions& options);

}  // namespace k2::bench

// The printed block and saved JSON of `k2 bench serve`. The expected block was produced by running vLLM's
// print statements (serve.py: "{:<40} {:<10}" / "{:<40} {:<10.2f}", "{s:{c}^{n}}") in Python on the same
// numbers, so it pins the labels, order, widths and rounding to vLLM's, not to our own output.
#include <gtest/gtest.h>

#include <cmath>

#include "bench/report.h"
#include "core/error.h"

namespace k2::bench {
namespace {

const char* const kExpectedFullTable = R"TABLE(============ Serving Benchmark Result ============
Successful requests:                     16        
Failed requests:                         0         
Maximum request concurrency:             4         
Request rate configured (RPS):           10000.00  
Benchmark duration (s):                  62.75     
Total input tokens:                      128000    
Total generated tokens:                  16000     
Request throughput (req/s):              0.25      
Request goodput (req/s):                 0.10      
Output token throughput (tok/s):         254.99    
Peak output token throughput (tok/s):    384.00    
Peak concurrent requests:                16.00     
Total token throughput (tok/s):          2294.89   
---------------Time to First Token----------------
Mean TTFT (ms):                          4278.00   
Median TTFT (ms):                        4100.50   
P99 TTFT (ms):                           8000.12   
P99.9 TTFT (ms):                         8100.00   
----------------End-to-end Latency----------------
Mean E2EL (ms):                          1.00      
Median E2EL (ms):                        2.00      
P99 E2EL (ms):                           3.00      
P99.9 E2EL (ms):                         4.00      
==================================================
)TABLE";

const char* const kExpectedHead = R"TABLE(============ Serving Benchmark Result ============
Successful requests:                     3         
Failed requests:                         1         
Benchmark duration (s):                  2.00      
)TABLE";

BenchmarkMetrics recipe_metrics() {
    BenchmarkMetrics m;
    m.completed = 16;
    m.failed = 0;
    m.total_input = 128000;
    m.total_output = 16000;
    m.request_throughput = 0.254976;
    m.request_goodput = 0.1;
    m.output_throughput = 254.987;
    m.max_output_tokens_per_s = 384.0;
    m.max_concurrent_requests = 16;
    m.total_token_throughput = 2294.885;
    m.stats[Metric::kTtft] = {4278.0, 4100.5, 1.5, {{99.0, 8000.125}, {99.9, 8100.0}}};
    m.stats[Metric::kTpot] = {9.0, 9.0, 9.0, {{99.0, 9.0}, {99.9, 9.0}}};
    m.stats[Metric::kItl] = {9.0, 9.0, 9.0, {{99.0, 9.0}, {99.9, 9.0}}};
    m.stats[Metric::kE2el] = {1.0, 2.0, 0.5, {{99.0, 3.0}, {99.9, 4.0}}};
    return m;
}

ReportOptions recipe_options() {
    ReportOptions options;
    options.duration_s = 62.7512;
    options.request_rate = 10000.0;
    options.max_concurrency = 4;
    options.has_goodput = true;
    options.selected_metrics = {Metric::kE2el, Metric::kTtft};  // printed in vLLM's fixed order anyway
    return options;
}

TEST(BenchReport, FullTableMatchesVllmFormatting) {
    EXPECT_EQ(format_result_table(recipe_metrics(), recipe_options()), kExpectedFullTable);
}

TEST(BenchReport, OptionalLinesAreLeftOut) {
    BenchmarkMetrics m;
    m.completed = 3;
    m.failed = 1;
    for (const Metric metric : kAllMetrics) m.stats[metric] = {};
    ReportOptions options;
    options.duration_s = 2.0;
    options.request_rate = INFINITY;
    options.selected_metrics = {};
    const std::string table = format_result_table(m, options);
    EXPECT_EQ(table.substr(0, std::string(kExpectedHead).size()), kExpectedHead);
    EXPECT_EQ(table.find("Request rate configured"), std::string::npos);
    EXPECT_EQ(table.find("goodput"), std::string::npos);
    EXPECT_EQ(table.find("Mean"), std::string::npos);
}

TEST(BenchReport, PythonFloatStrings) {
    EXPECT_EQ(python_float_str(1.0), "1.0");
    EXPECT_EQ(python_float_str(10000.0), "10000.0");
    EXPECT_EQ(python_float_str(0.5), "0.5");
    EXPECT_EQ(python_float_str(INFINITY), "inf");
}

TEST(BenchReport, SavedJsonHasVllmKeysInOrder) {
    const ReportOptions options = recipe_options();
    const nlohmann::ordered_json result = benchmark_result_json(recipe_metrics(), options, {}, false);
    SavedResultInfo info;
    info.date = "20260101-120000";
    info.backend = "openai";
    info.model_id = "moonshotai/Kimi-K2-Instruct";
    info.tokenizer_id = "moonshotai/Kimi-K2-Instruct";
    info.num_prompts = 16;
    info.metadata = {"gpu = H200", "run=1"};
    const nlohmann::ordered_json doc = saved_result_json(info, options, result);
    std::vector<std::string> keys;
    for (const auto& [key, value] : doc.items()) keys.push_back(key);
    const std::vector<std::string> expected = {
        "date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id", "num_prompts", "gpu", "run",
        "request_rate", "burstiness", "max_concurrency", "duration", "completed", "failed", "total_input_tokens",
        "total_output_tokens", "request_throughput", "request_goodput", "output_throughput",
        "total_token_throughput", "max_output_tokens_per_s", "max_concurrent_requests", "mean_ttft_ms",
        "median_ttft_ms", "std_ttft_ms", "p99_ttft_ms", "p99.9_ttft_ms", "mean_e2el_ms", "median_e2el_ms",
        "std_e2el_ms", "p99_e2el_ms", "p99.9_e2el_ms"};
    EXPECT_EQ(keys, expected);
    EXPECT_EQ(doc["gpu"], "H200");
    EXPECT_TRUE(doc["label"].is_null());
    EXPECT_EQ(doc["request_rate"], 10000.0);
    EXPECT_EQ(doc["max_concurrency"], 4);
    EXPECT_EQ(doc["request_goodput"], 0.1);
    EXPECT_EQ(doc["p99_ttft_ms"], 8000.125);
    EXPECT_EQ(default_result_filename(info, options),
              "openai-10000.0qps-concurrency4-Kimi-K2-Instruct-20260101-120000.json");
    info.label = "k2";
    ReportOptions plain = options;
    plain.request_rate = INFINITY;
    plain.max_concurrency.reset();
    EXPECT_EQ(default_result_filename(info, plain), "k2-infqps-Kimi-K2-Instruct-20260101-120000.json");
    EXPECT_EQ(saved_result_json(info, plain, result)["request_rate"], "inf");
    info.metadata = {"novalue"};
    EXPECT_THROW(saved_result_json(info, plain, result), k2::Error);
}

TEST(BenchReport, DetailedResultKeepsPerRequestArrays) {
    RequestOutput out;
    out.success = true;
    out.ttft = 0.5;
    out.itl = {0.1};
    out.generated_text = "hi";
    BenchmarkMetrics m = recipe_metrics();
    m.output_lens = {2};
    const std::vector<RequestOutput> outputs = {out};
    const nlohmann::ordered_json detailed = benchmark_result_json(m, recipe_options(), outputs, true);
    for (const char* key : {"input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors"}) {
        EXPECT_TRUE(detailed.contains(key)) << key;
    }
    EXPECT_EQ(detailed["itls"][0][0], 0.1);
    EXPECT_FALSE(benchmark_result_json(m, recipe_options(), outputs, false).contains("ttfts"));
}

}  // namespace
}  // namespace k2::bench

// `k2 bench serve`: vLLM's serving benchmark (reference/vllm.md §4) against any OpenAI-compatible server.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace k2::bench {

// The command-line options, named and defaulted as `vllm bench serve`'s.
struct BenchServeOptions {
    std::string backend = "openai";
    std::string base_url;  // empty: http://{host}:{port}
    std::string host = "127.0.0.1";
    int port = 8000;
    std::string endpoint;  // empty: the backend's default route
    std::string model;     // empty: the first model of GET /v1/models
    std::string served_model_name;
    std::string tokenizer;  // empty: --model when it is a directory, else the served model's root
    std::string dataset_name = "random";
    std::string dataset_path;
    int random_input_len = 1024;
    int random_output_len = 128;
    double random_range_ratio = 0.0;
    int random_prefix_len = 0;
    std::optional<int> sharegpt_output_len;
    int custom_output_len = 256;
    bool skip_chat_template = false;
    double request_rate = std::numeric_limits<double>::infinity();
    double burstiness = 1.0;
    std::optional<int> max_concurrency;
    int num_prompts = 1000;
    bool ignore_eos = false;
    uint64_t seed = 0;
    std::string percentile_metrics = "ttft,tpot,itl";
    std::string metric_percentiles = "99";
    std::vector<std::string> goodput;  // KEY:VALUE in ms
    bool save_result = false;
    bool save_detailed = false;
    std::string result_dir;
    std::string result_filename;
    std::vector<std::string> metadata;  // KEY=VALUE
    std::optional<std::string> label;
    std::string request_id_prefix = "benchmark-serving";
    bool disable_tqdm = false;
    std::optional<double> temperature;
    std::optional<double> top_p;
    std::optional<int> top_k;
    std::optional<double> min_p;
};

// Runs the benchmark, prints vLLM's result block on stdout and saves the JSON when asked. Throws k2::Error
// for bad options or when the initial test request fails.
void run_bench_serve(const BenchServeOptions& options);

}  // namespace k2::bench

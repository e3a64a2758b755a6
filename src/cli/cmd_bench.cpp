// `k2 bench serve`: vLLM's `vllm bench serve` flags (reference/vllm.md §4.1) mapped onto BenchServeOptions.
#include <cstdlib>
#include <memory>

#include "bench/bench_serve.h"
#include "cli/commands.h"
#include "core/error.h"

namespace k2::cli {

namespace {

// Flags CLI11 cannot hold directly: numbers that may be "inf" and optional values.
struct RawBenchFlags {
    std::string request_rate = "inf";
    std::string burstiness = "1.0";
    int max_concurrency = 0;
    int sharegpt_output_len = 0;
    std::string label;
    double temperature = 0.0, top_p = 0.0, min_p = 0.0;
    int top_k = 0;
    std::string tokenizer_mode;
    bool trust_remote_code = false;
};

double parse_rate(const std::string& text, const char* flag) {
    char* end = nullptr;
    const double value = std::strtod(text.c_str(), &end);
    K2_CHECK(end != text.c_str() && *end == '\0' && value > 0.0, "{}: '{}' must be a positive number or inf", flag,
             text);
    return value;
}

void add_endpoint_flags(CLI::App* cmd, bench::BenchServeOptions& o, RawBenchFlags& raw) {
    cmd->add_option("--backend", o.backend, "openai (completions; vllm is an alias) or openai-chat")
        ->capture_default_str();
    cmd->add_option("--base-url", o.base_url, "Server base URL, e.g. http://host:8000 (overrides --host/--port)");
    cmd->add_option("--host", o.host, "Server host")->capture_default_str();
    cmd->add_option("--port", o.port, "Server port")->capture_default_str();
    cmd->add_option("--endpoint", o.endpoint, "API path (default /v1/completions, chat: /v1/chat/completions)");
    cmd->add_option("--model", o.model, "Model id (default: the first entry of GET /v1/models)");
    cmd->add_option("--served-model-name", o.served_model_name, "Model name sent in requests (default: --model)");
    cmd->add_option("--tokenizer", o.tokenizer, "Model directory with the tokenizer (default: --model or served root)");
    cmd->add_option("--tokenizer-mode", raw.tokenizer_mode, "Accepted for compatibility");
    cmd->add_flag("--trust-remote-code", raw.trust_remote_code, "Accepted for compatibility");
}

void add_dataset_flags(CLI::App* cmd, bench::BenchServeOptions& o, RawBenchFlags& raw) {
    cmd->add_option("--dataset-name", o.dataset_name, "random, sharegpt or custom")->capture_default_str();
    cmd->add_option("--dataset-path", o.dataset_path, "ShareGPT JSON or custom JSONL file");
    cmd->add_option("--num-prompts", o.num_prompts, "Number of requests")->capture_default_str();
    cmd->add_option("--random-input-len", o.random_input_len, "Prompt tokens per request")->capture_default_str();
    cmd->add_option("--random-output-len", o.random_output_len, "Output tokens per request")->capture_default_str();
    cmd->add_option("--random-range-ratio", o.random_range_ratio, "Length range ratio in [0, 1)")
        ->capture_default_str();
    cmd->add_option("--random-prefix-len", o.random_prefix_len, "Shared prefix tokens")->capture_default_str();
    cmd->add_option("--sharegpt-output-len", raw.sharegpt_output_len, "Fixed output length for sharegpt");
    cmd->add_option("--custom-output-len", o.custom_output_len, "Output length for custom")->capture_default_str();
    cmd->add_flag("--skip-chat-template", o.skip_chat_template, "custom: send prompts without the chat template");
    cmd->add_option("--seed", o.seed, "Seed of the dataset and arrival RNGs")->capture_default_str();
}

void add_run_flags(CLI::App* cmd, bench::BenchServeOptions& o, RawBenchFlags& raw) {
    cmd->add_option("--request-rate", raw.request_rate, "Requests per second, or inf")->capture_default_str();
    cmd->add_option("--burstiness", raw.burstiness, "Gamma shape of the arrivals (1: Poisson)")->capture_default_str();
    cmd->add_option("--max-concurrency", raw.max_concurrency, "Maximum requests in flight");
    cmd->add_flag("--ignore-eos", o.ignore_eos, "Send ignore_eos (always on for the random dataset)");
    cmd->add_option("--percentile-metrics", o.percentile_metrics, "Comma list of ttft,tpot,itl,e2el")
        ->capture_default_str();
    cmd->add_option("--metric-percentiles", o.metric_percentiles, "Comma list of percentiles")->capture_default_str();
    cmd->add_option("--goodput", o.goodput, "SLOs KEY:VALUE in ms (ttft, tpot, e2el)");
    cmd->add_option("--request-id-prefix", o.request_id_prefix, "Prefix of x-request-id")->capture_default_str();
    cmd->add_flag("--disable-tqdm", o.disable_tqdm, "No progress bar");
    cmd->add_option("--temperature", raw.temperature, "Sampling temperature sent with each request");
    cmd->add_option("--top-p", raw.top_p, "top_p sent with each request");
    cmd->add_option("--top-k", raw.top_k, "top_k sent with each request");
    cmd->add_option("--min-p", raw.min_p, "min_p sent with each request");
}

void add_result_flags(CLI::App* cmd, bench::BenchServeOptions& o, RawBenchFlags& raw) {
    cmd->add_flag("--save-result", o.save_result, "Save the result JSON");
    cmd->add_flag("--save-detailed", o.save_detailed, "Save per-request arrays too (implies --save-result)");
    cmd->add_option("--result-dir", o.result_dir, "Directory of the result JSON");
    cmd->add_option("--result-filename", o.result_filename, "File name of the result JSON");
    cmd->add_option("--metadata", o.metadata, "KEY=VALUE pairs stored in the result JSON");
    cmd->add_option("--label", raw.label, "Label stored in the result JSON and its file name");
}

}  // namespace

void add_bench_command(CLI::App& app) {
    CLI::App* bench = app.add_subcommand("bench", "Benchmarks");
    bench->require_subcommand(1);
    add_bench_step_command(*bench);
    CLI::App* serve =
        bench->add_subcommand("serve", "vLLM's serving benchmark against an OpenAI-compatible server");
    auto options = std::make_shared<bench::BenchServeOptions>();
    auto raw = std::make_shared<RawBenchFlags>();
    add_endpoint_flags(serve, *options, *raw);
    add_dataset_flags(serve, *options, *raw);
    add_run_flags(serve, *options, *raw);
    add_result_flags(serve, *options, *raw);
    serve->callback([serve, options, raw] {
        bench::BenchServeOptions o = *options;
        o.request_rate = parse_rate(raw->request_rate, "--request-rate");
        o.burstiness = parse_rate(raw->burstiness, "--burstiness");
        const auto given = [serve](const char* flag) { return serve->count(flag) > 0; };
        if (given("--max-concurrency")) o.max_concurrency = raw->max_concurrency;
        if (given("--sharegpt-output-len")) o.sharegpt_output_len = raw->sharegpt_output_len;
        if (given("--label")) o.label = raw->label;
        if (given("--temperature")) o.temperature = raw->temperature;
        if (given("--top-p")) o.top_p = raw->top_p;
        if (given("--top-k")) o.top_k = raw->top_k;
        if (given("--min-p")) o.min_p = raw->min_p;
        bench::run_bench_serve(o);
    });
}

}  // namespace k2::cli

#include "bench/bench_serve.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <semaphore>
#include <sstream>
#include <thread>

#include "bench/arrival.h"
#include "bench/dataset.h"
#include "bench/progress.h"
#include "bench/report.h"
#include "bench/request_func.h"
#include "core/error.h"
#include "core/log.h"

namespace k2::bench {

namespace {

std::vector<std::string> split(const std::string& text, char sep) {
    std::vector<std::string> parts;
    std::stringstream stream(text);
    for (std::string part; std::getline(stream, part, sep);) {
        if (!part.empty()) {
            parts.push_back(part);
        }
    }
    return parts;
}

std::vector<double> parse_percentiles(const std::string& text) {
    std::vector<double> percentiles;
    for (const std::string& part : split(text, ',')) {
        char* end = nullptr;
        const double p = std::strtod(part.c_str(), &end);
        K2_CHECK(end != part.c_str() && *end == '\0' && p >= 0.0 && p <= 100.0,
                 "--metric-percentiles: '{}' is not a percentile in [0, 100]", part);
        percentiles.push_back(p);
    }
    return percentiles;
}

std::map<std::string, double> parse_goodput(const std::vector<std::string>& items) {
    std::map<std::string, double> slo_ms;
    for (const std::string& item : items) {
        for (const std::string& pair : split(item, ' ')) {
            const size_t colon = pair.find(':');
            K2_CHECK(colon != std::string::npos, "--goodput: '{}' must be KEY:VALUE (e.g. ttft:500)", pair);
            const std::string key = pair.substr(0, colon);
            K2_CHECK(key == "ttft" || key == "tpot" || key == "e2el",
                     "--goodput: invalid metric '{}' (valid: ttft, tpot, e2el)", key);
            char* end = nullptr;
            const double value = std::strtod(pair.c_str() + colon + 1, &end);
            K2_CHECK(*end == '\0' && value >= 0.0, "--goodput: '{}' needs a non-negative number of ms", pair);
            slo_ms[key] = value;
        }
    }
    return slo_ms;
}

std::string base_url_of(const BenchServeOptions& options) {
    std::string base = options.base_url.empty() ? fmt::format("http://{}:{}", options.host, options.port)
                                                : options.base_url;
    while (!base.empty() && base.back() == '/') {
        base.pop_back();
    }
    return base;
}

std::vector<std::pair<std::string, std::string>> auth_headers(const std::string& api_key) {
    if (api_key.empty()) {
        return {};
    }
    return {{"Authorization", "Bearer " + api_key}};
}

struct ServedModel {
    std::string id;
    std::string root;
};

ServedModel fetch_served_model(const std::string& base_url, const std::string& api_key) {
    HttpRequest request;
    request.url = Url::parse(base_url + "/v1/models");
    request.headers = auth_headers(api_key);
    request.timeout_s = 60.0;
    const HttpResponse response = http_fetch(request);
    K2_CHECK(response.head.status == 200, "GET {} returned HTTP {}: {}", request.url.str(), response.head.status,
             response.body.substr(0, 500));
    const nlohmann::json body = nlohmann::json::parse(response.body, nullptr, false);
    K2_CHECK(!body.is_discarded() && body.contains("data") && body["data"].is_array() && !body["data"].empty() &&
                 body["data"][0].contains("id"),
             "GET {}: no model in the response: {}", request.url.str(), response.body.substr(0, 500));
    const nlohmann::json& first = body["data"][0];
    return {first["id"].get<std::string>(), first.value("root", first["id"].get<std::string>())};
}

std::vector<SampleRequest> load_dataset(const BenchServeOptions& options, const PromptTokenizer& tokenizer) {
    if (options.dataset_name == "random") {
        return sample_random(tokenizer, {options.num_prompts, options.random_input_len, options.random_output_len,
                                         options.random_range_ratio, options.random_prefix_len, options.seed});
    }
    K2_CHECK(!options.dataset_path.empty(), "--dataset-name {} needs --dataset-path", options.dataset_name);
    if (options.dataset_name == "sharegpt") {
        return sample_sharegpt(options.dataset_path, tokenizer, options.num_prompts, options.sharegpt_output_len,
                               options.seed);
    }
    K2_CHECK(options.dataset_name == "custom", "--dataset-name: unsupported dataset '{}' (random, sharegpt, custom)",
             options.dataset_name);
    return sample_custom(options.dataset_path, tokenizer, options.num_prompts, options.custom_output_len,
                         options.skip_chat_template, options.seed);
}

nlohmann::json sampling_overrides(const BenchServeOptions& options) {
    nlohmann::json extra = nlohmann::json::object();
    if (options.temperature) extra["temperature"] = *options.temperature;
    if (options.top_p) extra["top_p"] = *options.top_p;
    if (options.top_k) extra["top_k"] = *options.top_k;
    if (options.min_p) extra["min_p"] = *options.min_p;
    return extra;
}

// Everything resolved before the run: where to send, what, and how to count.
struct Plan {
    Backend backend = Backend::kCompletions;
    Url api_url;
    std::string api_key;
    std::string model_id;
    std::string model_name;  // sent in requests
    std::string tokenizer_id;
    std::unique_ptr<PromptTokenizer> tokenizer;
    std::vector<SampleRequest> samples;
    nlohmann::json extra_body;
};

Plan make_plan(const BenchServeOptions& options) {
    Plan plan;
    plan.backend = parse_backend(options.backend);
    const std::string endpoint = options.endpoint.empty() ? default_endpoint(plan.backend) : options.endpoint;
    const std::string base_url = base_url_of(options);
    plan.api_url = Url::parse(base_url + endpoint);
    const bool is_chat = plan.backend == Backend::kChat;
    K2_CHECK(plan.api_url.path.ends_with(is_chat ? "chat/completions" : "completions"),
             "--endpoint: OpenAI {} API URL must end with '{}', got {}", is_chat ? "Chat Completions" : "Completions",
             is_chat ? "chat/completions" : "completions", plan.api_url.str());
    const char* key = std::getenv("OPENAI_API_KEY");
    plan.api_key = key != nullptr ? key : "";
    std::optional<ServedModel> served;
    if (options.model.empty() || (options.tokenizer.empty() && !std::filesystem::is_directory(options.model))) {
        served = fetch_served_model(base_url, plan.api_key);
    }
    plan.model_id = options.model.empty() ? served->id : options.model;
    plan.model_name = options.served_model_name.empty() ? plan.model_id : options.served_model_name;
    plan.tokenizer_id = !options.tokenizer.empty()                          ? options.tokenizer
                        : std::filesystem::is_directory(plan.model_id) ? plan.model_id
                                                                            : served->root;
    K2_CHECK(std::filesystem::is_directory(plan.tokenizer_id),
             "--tokenizer: '{}' is not a model directory; pass --tokenizer DIR with the model's tokenizer files",
             plan.tokenizer_id);
    plan.tokenizer = load_prompt_tokenizer(plan.tokenizer_id);
    plan.samples = load_dataset(options, *plan.tokenizer);
    K2_CHECK(!plan.samples.empty(), "--num-prompts: the dataset gave no prompts");
    plan.extra_body = sampling_overrides(options);
    return plan;
}

RequestInput request_input(const Plan& plan, const BenchServeOptions& options, size_t index) {
    const SampleRequest& sample = plan.samples[index];
    RequestInput input;
    input.url = plan.api_url;
    input.model = plan.model_name;
    input.prompt = sample.prompt;
    input.prompt_len = sample.prompt_len;
    input.output_len = sample.expected_output_len;
    // Newer vLLM forces ignore_eos for the random dataset so every request generates its full length.
    input.ignore_eos = options.ignore_eos || options.dataset_name == "random";
    input.request_id = options.request_id_prefix + std::to_string(index);
    input.extra_body = plan.extra_body;
    input.api_key = plan.api_key;
    return input;
}

void run_initial_test(const Plan& plan, const BenchServeOptions& options) {
    std::printf("Starting initial single prompt test run...\n");
    std::fflush(stdout);
    RequestInput input = request_input(plan, options, 0);
    input.request_id = options.request_id_prefix + "test";
    const RequestOutput output = send_request(input, plan.backend, Clock::now());
    K2_CHECK(output.success,
             "Initial test run failed - Please make sure benchmark arguments are correctly specified. Error: {}",
             output.error);
    std::printf("Initial test run completed. Starting main benchmark run...\n");
}

struct RunResult {
    std::vector<RequestOutput> outputs;
    double duration_s = 0.0;
};

RunResult run_requests(const Plan& plan, const BenchServeOptions& options) {
    const auto num_requests = static_cast<int>(plan.samples.size());
    const std::vector<double> send_times =
        arrival_times(num_requests, options.request_rate, options.burstiness, options.seed);
    RunResult result;
    result.outputs.resize(plan.samples.size());
    const int limit = options.max_concurrency.value_or(num_requests);
    std::counting_semaphore<> slots(std::max(1, limit));
    ProgressBar progress(num_requests, !options.disable_tqdm);
    std::vector<std::thread> threads;
    threads.reserve(plan.samples.size());
    const Clock::time_point start = Clock::now();
    for (size_t i = 0; i < plan.samples.size(); ++i) {
        std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(
                                                  std::chrono::duration<double>(send_times[i])));
        threads.emplace_back([&, i] {
            slots.acquire();
            result.outputs[i] = send_request(request_input(plan, options, i), plan.backend, start);
            slots.release();
            progress.update();
        });
    }
    for (std::thread& thread : threads) {
        thread.join();
    }
    result.duration_s = std::chrono::duration<double>(Clock::now() - start).count();
    progress.close();
    return result;
}

std::string now_stamp() {
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    char text[32];
    std::strftime(text, sizeof(text), "%Y%m%d-%H%M%S", &local);
    return text;
}

void save_result(const BenchServeOptions& options, const Plan& plan, const ReportOptions& report,
                 const nlohmann::ordered_json& benchmark_result) {
    SavedResultInfo info;
    info.date = now_stamp();
    info.backend = options.backend;
    info.label = options.label;
    info.model_id = plan.model_id;
    info.tokenizer_id = plan.tokenizer_id;
    info.num_prompts = options.num_prompts;
    info.metadata = options.metadata;
    info.burstiness = options.burstiness;
    const nlohmann::ordered_json doc = saved_result_json(info, report, benchmark_result);
    std::filesystem::path path =
        options.result_filename.empty() ? default_result_filename(info, report) : options.result_filename;
    if (!options.result_dir.empty()) {
        std::filesystem::create_directories(options.result_dir);
        path = std::filesystem::path(options.result_dir) / path;
    }
    std::ofstream file(path);
    K2_CHECK(file.good(), "--save-result: cannot open {} for writing: {}", path.string(), std::strerror(errno));
    file << doc.dump();
    file.close();
    // A full disk shows only when the buffered bytes are flushed; without this check the run would report a
    // result file that is empty or cut short.
    if (file.fail()) {
        const std::string reason = std::strerror(errno);
        // A cut-short JSON file would pass for a result; only regular files are removed (not /dev/full).
        std::error_code ignored;
        if (std::filesystem::is_regular_file(path, ignored)) {
            std::filesystem::remove(path, ignored);
        }
        K2_FAIL("--save-result: writing {} failed: {}", path.string(), reason);
    }
    K2_INFO("saved benchmark result to {}", path.string());
}

}  // namespace

void run_bench_serve(const BenchServeOptions& options) {
    ReportOptions report;
    report.selected_metrics.clear();
    for (const std::string& key : split(options.percentile_metrics, ',')) {
        report.selected_metrics.push_back(parse_metric(key));
    }
    MetricsOptions metrics_options;
    metrics_options.percentiles = parse_percentiles(options.metric_percentiles);
    metrics_options.goodput_slo_ms = parse_goodput(options.goodput);
    report.has_goodput = !metrics_options.goodput_slo_ms.empty();
    report.request_rate = options.request_rate;
    report.max_concurrency = options.max_concurrency;
    K2_CHECK(!options.max_concurrency || *options.max_concurrency > 0, "--max-concurrency must be positive");

    const Plan plan = make_plan(options);
    metrics_options.count_tokens = [&plan](const std::string& text) {
        return static_cast<int>(plan.tokenizer->encode(text).size());
    };
    run_initial_test(plan, options);
    std::printf("Traffic request rate: %s\n", python_float_str(options.request_rate).c_str());
    std::printf("Burstiness factor: %s (%s)\n", python_float_str(options.burstiness).c_str(),
                options.burstiness == 1.0 ? "Poisson process" : "Gamma distribution");
    std::printf("Maximum request concurrency: %s\n",
                options.max_concurrency ? std::to_string(*options.max_concurrency).c_str() : "None");
    std::fflush(stdout);

    const RunResult run = run_requests(plan, options);
    report.duration_s = run.duration_s;
    const BenchmarkMetrics metrics = calculate_metrics(run.outputs, run.duration_s, metrics_options);
    if (metrics.failed > 0) {
        std::printf("Failed requests during benchmark run detected (capping to 10):\n");
        int shown = 0;
        for (const RequestOutput& output : run.outputs) {
            if (!output.success && shown < 10) {
                std::printf("Error %d: %s\n", shown++, output.error.c_str());
            }
        }
    }
    std::fputs(format_result_table(metrics, report).c_str(), stdout);
    std::fflush(stdout);
    if (options.save_result || options.save_detailed) {
        save_result(options, plan, report,
                    benchmark_result_json(metrics, report, run.outputs, options.save_detailed));
    }
}

}  // namespace k2::bench

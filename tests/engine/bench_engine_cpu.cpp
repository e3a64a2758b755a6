// bench_engine_cpu: output tokens/s of the Engine on the CPU backend at several concurrency levels.
// Each level submits `concurrency` requests at once (random prompts of --prompt-len tokens, greedy,
// --max-tokens tokens each, ignore_eos) to a fresh engine with its loop thread, and measures the wall
// time until all finished, after one unreported warm-up request. Prints a Markdown table (docs/perf/cpu.md).
//   bench_engine_cpu [--model DIR] [--prompt-len 32] [--max-tokens 32] [--concurrency 1,8,32] [--threads N]
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/log.h"
#include "engine/engine.h"
#include "model/model.h"

namespace {

struct BenchArgs {
    std::string model_dir = std::string(K2_SOURCE_DIR) + "/tests/fixtures/tiny-kimi-k2";
    int prompt_len = 32;
    int max_tokens = 32;
    int num_threads = 0;
    std::vector<int> concurrency = {1, 8, 32};
};

BenchArgs parse_args(int argc, char** argv) {
    BenchArgs args;
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        K2_CHECK(i + 1 < argc, "{} needs a value", flag);
        const std::string value = argv[++i];
        if (flag == "--model") {
            args.model_dir = value;
        } else if (flag == "--prompt-len") {
            args.prompt_len = std::stoi(value);
        } else if (flag == "--max-tokens") {
            args.max_tokens = std::stoi(value);
        } else if (flag == "--threads") {
            args.num_threads = std::stoi(value);
        } else if (flag == "--concurrency") {
            args.concurrency.clear();
            std::stringstream list(value);
            for (std::string item; std::getline(list, item, ',');) args.concurrency.push_back(std::stoi(item));
        } else {
            K2_FAIL("unknown flag {}", flag);
        }
    }
    return args;
}

// User + system CPU time of this process: with other work on the machine, wall time alone says little.
double process_cpu_seconds() {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) * 1e-6; };
    return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

struct LevelResult {
    int concurrency = 0;
    double seconds = 0.0;
    double cpu_seconds = 0.0;
    uint64_t output_tokens = 0;
    double mean_ttft = 0.0;
    double mean_itl = 0.0;
    uint64_t steps = 0;
};

LevelResult run_level(const BenchArgs& args, int concurrency) {
    k2::ModelOptions options;
    options.num_threads = args.num_threads;
    k2::EngineConfig config;
    config.max_num_seqs = 256;
    config.max_model_len = args.prompt_len + args.max_tokens;
    config.num_kv_blocks = concurrency * ((args.prompt_len + args.max_tokens + 63) / 64) + 4;
    k2::Engine engine(config, k2::load_model(args.model_dir, options), nullptr);
    const auto vocab = static_cast<uint32_t>(engine.model_config().vocab_size);
    std::mt19937 rng(static_cast<uint32_t>(concurrency));
    std::vector<k2::EngineRequest> requests;
    for (int i = 0; i < concurrency; ++i) {
        k2::EngineRequest request;
        request.request_id = "bench" + std::to_string(i);
        for (int t = 0; t < args.prompt_len; ++t) request.prompt_token_ids.push_back(static_cast<int32_t>(rng() % vocab));
        request.params.temperature = 0.0;
        request.params.max_tokens = args.max_tokens;
        request.params.ignore_eos = true;
        requests.push_back(std::move(request));
    }
    engine.start();
    const auto start = std::chrono::steady_clock::now();
    const double cpu_start = process_cpu_seconds();
    std::vector<std::shared_ptr<k2::RequestStream>> streams;
    for (auto& request : requests) streams.push_back(engine.submit(std::move(request)));
    for (const auto& stream : streams) {
        while (!stream->all_finished()) stream->wait_pop(std::chrono::milliseconds(50));
    }
    LevelResult result;
    result.concurrency = concurrency;
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    result.cpu_seconds = process_cpu_seconds() - cpu_start;
    engine.stop(false);
    const k2::EngineStats stats = engine.stats();
    result.output_tokens = stats.generation_tokens;
    result.mean_ttft = stats.time_to_first_token_seconds.sum / static_cast<double>(stats.time_to_first_token_seconds.count);
    result.mean_itl = stats.inter_token_latency_seconds.count > 0
                          ? stats.inter_token_latency_seconds.sum / static_cast<double>(stats.inter_token_latency_seconds.count)
                          : 0.0;
    result.steps = stats.num_steps;
    return result;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        const BenchArgs args = parse_args(argc, argv);
        k2::set_log_level(k2::LogLevel::WARNING);
        std::printf("model: %s, prompt %d tokens, %d output tokens per request (greedy, ignore_eos)\n\n",
                    args.model_dir.c_str(), args.prompt_len, args.max_tokens);
        // Warm-up (not reported): the first forward of a process pays for page faults on the mmap'ed
        // weights and the OpenMP thread pool.
        BenchArgs warmup = args;
        warmup.max_tokens = 2;
        run_level(warmup, 1);
        std::printf("| concurrency | output tokens | wall s | output tok/s | CPU s | output tok per CPU s | mean TTFT ms "
                    "| mean ITL ms | steps |\n");
        std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for (const int concurrency : args.concurrency) {
            const LevelResult r = run_level(args, concurrency);
            std::printf("| %d | %llu | %.2f | %.1f | %.2f | %.1f | %.1f | %.1f | %llu |\n", r.concurrency,
                        static_cast<unsigned long long>(r.output_tokens), r.seconds,
                        static_cast<double>(r.output_tokens) / r.seconds, r.cpu_seconds,
                        static_cast<double>(r.output_tokens) / r.cpu_seconds, r.mean_ttft * 1e3, r.mean_itl * 1e3,
                        static_cast<unsigned long long>(r.steps));
            std::fflush(stdout);
        }
        return 0;
    } catch (const std::exception& error) {
        std::fprintf(stderr, "bench_engine_cpu: %s\n", error.what());
        return 1;
    }
}

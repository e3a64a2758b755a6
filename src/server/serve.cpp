// run_serve: HTTP first (so /health answers 503 while loading), then tokenizer, model and engine; then serve
// until SIGTERM/SIGINT, drain, exit 0.
#include "server/serve.h"

#include <fmt/ranges.h>
#include <sys/resource.h>

#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/log.h"
#include "engine/engine.h"
#include "executor/parallel_executor.h"
#include "io/model_config.h"
#include "io/model_path.h"
#include "model/model.h"
#include "server/http_server.h"
#include "server/openai_server.h"
#include "server/scripted_model.h"
#include "tokenizer/tokenizer.h"

namespace k2::server {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {

// 1,024 concurrent streams need more descriptors than the usual soft limit of 1,024.
void raise_fd_limit() {
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
}

std::string read_file(const fs::path& path) {
    std::ifstream in(path);
    K2_CHECK(in.good(), "cannot read {}", path.string());
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

GenerationDefaults load_generation_defaults(const ServeOptions& options) {
    if (options.generation_config == "vllm")
        return {};
    const fs::path dir =
        options.generation_config == "auto" ? fs::path(options.model) : fs::path(options.generation_config);
    const fs::path file = dir / "generation_config.json";
    if (!fs::exists(file)) {
        K2_CHECK(options.generation_config == "auto", "--generation-config: {} does not exist", file.string());
        return {};
    }
    const json config = json::parse(read_file(file), nullptr, /*allow_exceptions=*/false);
    K2_CHECK(!config.is_discarded(), "{}: not valid JSON", file.string());
    GenerationDefaults defaults = parse_generation_defaults(config);
    if (defaults.temperature || defaults.top_p || defaults.top_k || defaults.repetition_penalty) {
        K2_INFO("Default sampling parameters have been overridden by the model's generation config ({}).",
                file.string());
    }
    return defaults;
}

std::string load_chat_template(const std::string& value) {
    if (value.empty())
        return {};
    if (fs::exists(value))
        return read_file(value);
    K2_CHECK(value.find("{{") != std::string::npos || value.find("{%") != std::string::npos,
             "--chat-template: {} is neither a file nor a template", value);
    return value;
}

KvCacheDType parse_kv_cache_dtype(const std::string& value, const std::string& device) {
    if (value == "auto")
        return device == "cpu" ? KvCacheDType::F32 : KvCacheDType::BF16;
    if (value == "fp8" || value == "fp8_e4m3")
        return KvCacheDType::FP8_E4M3;
    if (value == "bfloat16" || value == "bf16")
        return KvCacheDType::BF16;
    if (value == "float32" || value == "float")
        return KvCacheDType::F32;
    K2_FAIL("--kv-cache-dtype {} is not supported (auto, fp8, fp8_e4m3, bfloat16, float32)", value);
}

uint64_t checkpoint_bytes(const fs::path& dir) {
    uint64_t total = 0;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
        if (entry.path().extension() == ".safetensors")
            total += entry.file_size(ec);
    }
    return total;
}

ModelOptions make_model_options(const ServeOptions& options) {
    ModelOptions model_options;
    model_options.device = options.device;
    model_options.kv_cache_dtype = parse_kv_cache_dtype(options.kv_cache_dtype, options.device);
    model_options.max_num_tokens = options.max_num_batched_tokens;
    model_options.max_num_seqs = options.max_num_seqs;
    model_options.max_model_len = options.max_model_len;
    model_options.enforce_eager = options.enforce_eager;
    return model_options;
}

// Every rank of a parallel job loads with the same options; OpenMP threads are split between this node's ranks.
executor::ShardSpec make_shard_spec(const ServeOptions& options) {
    executor::ShardSpec spec;
    spec.model_dir = options.model;
    spec.model = make_model_options(options);
    spec.model.num_threads = executor::threads_per_rank(static_cast<int>(options.parallel.local_ranks().size()));
    return spec;
}

std::unique_ptr<Model> load(const ServeOptions& options, const std::shared_ptr<const Tokenizer>& tokenizer) {
    if (!options.test_scripted_output.empty()) {
        K2_WARN("TEST MODE: the model's weights are not used; outputs come from {}", options.test_scripted_output);
        return std::make_unique<ScriptedModel>(load_model_config(options.model), tokenizer,
                                               load_script(options.test_scripted_output, *tokenizer));
    }
    const uint64_t bytes = checkpoint_bytes(options.model);
    K2_INFO("Loading weights from {} ({:.2f} GiB)", options.model, static_cast<double>(bytes) / (1ull << 30));
    const auto start = std::chrono::steady_clock::now();
    std::unique_ptr<Model> model = load_model(options.model, make_model_options(options));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    K2_INFO("Loading weights took {:.2f} seconds ({:.2f} GiB, {:.2f} GiB/s)", seconds,
            static_cast<double>(bytes) / (1ull << 30),
            static_cast<double>(bytes) / (1ull << 30) / std::max(seconds, 1e-6));
    return model;
}

// vLLM's periodic line: throughput since the last line, queue sizes and KV usage.
class StatsLogger {
public:
    StatsLogger(std::shared_ptr<Engine> engine, double interval_s, int engine_index = 0)
        : m_engine(std::move(engine)), m_interval_s(interval_s), m_engine_index(engine_index) {
        if (interval_s > 0)
            m_thread = std::thread([this] { run(); });
    }
    ~StatsLogger() {
        {
            const std::lock_guard lock(m_mutex);
            m_stop = true;
        }
        m_cv.notify_all();
        if (m_thread.joinable())
            m_thread.join();
    }

private:
    void run() {
        EngineStats last = m_engine->stats();
        auto last_time = std::chrono::steady_clock::now();
        std::unique_lock lock(m_mutex);
        while (!m_cv.wait_for(lock, std::chrono::duration<double>(m_interval_s), [this] { return m_stop; })) {
            const EngineStats now = m_engine->stats();
            const auto now_time = std::chrono::steady_clock::now();
            const double dt = std::chrono::duration<double>(now_time - last_time).count();
            const bool idle = now.num_running == 0 && now.num_waiting == 0 && now.prompt_tokens == last.prompt_tokens &&
                              now.generation_tokens == last.generation_tokens;
            if (!idle) {
                const double hit_rate =
                    now.prefix_cache_queries > last.prefix_cache_queries
                        ? 100.0 * static_cast<double>(now.prefix_cache_hits - last.prefix_cache_hits) /
                              static_cast<double>(now.prefix_cache_queries - last.prefix_cache_queries)
                        : 0.0;
                K2_INFO(
                    "Engine {:03d}: Avg prompt throughput: {:.1f} tokens/s, Avg generation throughput: {:.1f} "
                    "tokens/s, Running: {} reqs, Waiting: {} reqs, KV cache usage: {:.1f}%, Prefix cache hit rate: "
                    "{:.1f}%",
                    m_engine_index,
                    static_cast<double>(now.prompt_tokens - last.prompt_tokens) / dt,
                    static_cast<double>(now.generation_tokens - last.generation_tokens) / dt, now.num_running,
                    now.num_waiting, 100.0 * now.kv_usage, hit_rate);
            }
            last = now;
            last_time = now_time;
        }
    }

    std::shared_ptr<Engine> m_engine;
    double m_interval_s;
    int m_engine_index;
    std::mutex m_mutex;
    std::condition_variable m_cv;
    bool m_stop = false;
    std::thread m_thread;
};

OpenAiServerConfig make_server_config(const ServeOptions& options) {
    OpenAiServerConfig config;
    config.served_model_names =
        options.served_model_names.empty() ? std::vector<std::string>{options.model} : options.served_model_names;
    config.model_root = options.model;
    config.api_keys = options.api_keys;
    config.enable_auto_tool_choice = options.enable_auto_tool_choice;
    config.response_role = options.response_role;
    config.chat_template = load_chat_template(options.chat_template);
    config.generation_defaults = load_generation_defaults(options);
    config.limits.max_logprobs = options.max_logprobs;
    config.limits.max_n = options.max_n;
    config.enable_log_requests = options.enable_log_requests;
    config.enable_force_include_usage = options.enable_force_include_usage;
    config.enable_web_ui = !options.disable_web_ui;
    config.version = K2_SERVER_VERSION;
    return config;
}

// The KV budget: --kv-cache-memory-bytes when given, else on a GPU what --gpu-memory-utilization leaves after the
// weights and activations (vLLM's profile step, without the profiling run: activations are preallocated).
size_t kv_cache_bytes(const ServeOptions& options, const Model& model) {
    if (options.kv_cache_memory_bytes_set) {
        return options.kv_cache_memory_bytes;
    }
    const size_t budget = model.kv_cache_budget_bytes(options.gpu_memory_utilization);
    if (options.device != "cuda" || budget == 0) {  // a host model, or the scripted test model
        return options.kv_cache_memory_bytes;
    }
    const size_t per_block = model.kv_cache_bytes_per_block();
    K2_CHECK(budget >= per_block,
             "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the "
             "engine (it is {:.2f}; the weights and activations leave {} bytes)",
             options.gpu_memory_utilization, budget);
    const size_t tokens = budget / per_block * kKvBlockSize;
    K2_INFO("Available KV cache memory: {:.2f} GiB", static_cast<double>(budget) / (1ull << 30));
    K2_INFO("GPU KV cache size: {} tokens", tokens);
    const int max_len = options.max_model_len > 0 ? options.max_model_len
                                                   : static_cast<int>(model.config().max_position_embeddings);
    K2_INFO("Maximum concurrency for {} tokens per request: {:.2f}x", max_len,
            static_cast<double>(tokens) / std::max(max_len, 1));
    return budget;
}

std::shared_ptr<Engine> make_engine(const ServeOptions& options, const std::shared_ptr<const Tokenizer>& tokenizer,
                                    std::unique_ptr<Model> model) {
    EngineConfig engine_config;
    engine_config.max_num_seqs = options.max_num_seqs;
    engine_config.max_num_batched_tokens = options.max_num_batched_tokens;
    engine_config.max_model_len = options.max_model_len;
    engine_config.num_kv_blocks = options.num_gpu_blocks_override;
    engine_config.kv_cache_memory_bytes = kv_cache_bytes(options, *model);
    engine_config.enable_prefix_caching = options.enable_prefix_caching;
    engine_config.max_waiting = options.max_num_queued_reqs;
    engine_config.scheduling_policy = options.scheduling_policy;
    engine_config.async_scheduling = options.async_scheduling;
    engine_config.max_logprobs =
        options.max_logprobs < 0 ? static_cast<int>(model->config().vocab_size) : options.max_logprobs;
    engine_config.seed = options.seed;
    auto engine = std::make_shared<Engine>(engine_config, std::move(model), tokenizer);
    return engine;
}

// The engines behind the API: one in-process model, or one Engine per DP replica over a ParallelExecutor whose
// ranks run in `k2 worker` processes (docs/parallelism.md).
struct Backend {
    std::shared_ptr<executor::ParallelExecutor> executor;
    std::vector<std::shared_ptr<Engine>> engines;
};

Backend make_backend(const ServeOptions& options, const std::shared_ptr<const Tokenizer>& tokenizer,
                     const std::shared_ptr<OpenAiServer>& server) {
    Backend backend;
    if (options.parallel.config.is_single()) {
        backend.engines.push_back(make_engine(options, tokenizer, load(options, tokenizer)));
        return backend;
    }
    // A dead rank ends the job: /health turns 503 at once, then the process exits naming the rank. Runs on the
    // worker group's monitor thread, which has already stopped the other ranks; engine threads may be blocked in
    // a collective with the dead rank, so nothing here waits for them.
    auto on_failure = [server](const std::string& message) {
        server->set_failed(message);
        std::this_thread::sleep_for(std::chrono::seconds(1));
        K2_ERROR("The parallel job cannot continue ({}); exiting", message);
        std::fprintf(stderr, "error: worker group failed: %s\n", message.c_str());
        std::fflush(stderr);
        std::_Exit(1);
    };
    const uint64_t bytes = checkpoint_bytes(options.model);
    K2_INFO("Loading weights from {} ({:.2f} GiB) over {} ranks", options.model,
            static_cast<double>(bytes) / (1ull << 30), options.parallel.config.world_size());
    backend.executor = executor::ParallelExecutor::start(options.parallel, make_shard_spec(options), on_failure);
    for (int dp = 0; dp < backend.executor->num_replicas(); ++dp) {
        backend.engines.push_back(
            make_engine(options, tokenizer, std::make_unique<executor::ShardedModel>(backend.executor, dp)));
    }
    return backend;
}

// A hub id becomes its snapshot directory in the local cache; the id stays the served model name.
ServeOptions resolve_model(const ServeOptions& requested) {
    ServeOptions options = requested;
    options.model = resolve_model_path(requested.model, requested.revision, requested.download_dir).string();
    if (options.served_model_names.empty()) {
        options.served_model_names = {requested.model};
    }
    return options;
}

}  // namespace

int run_serve(const ServeOptions& requested) {
    const ServeOptions options = resolve_model(requested);
    // Signals are taken synchronously by this thread (sigwait); every thread started below inherits the mask.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    raise_fd_limit();
    if (options.headless) {
        return executor::run_headless(options.parallel, make_shard_spec(options));
    }
    if (!options.test_scripted_output.empty()) {
        const char* enabled = std::getenv("K2_ENABLE_TEST_MODEL");
        K2_CHECK(enabled != nullptr && std::string(enabled) == "1",
                 "--test-scripted-output is a test-only flag: it replaces the model with scripted output and needs "
                 "the environment variable K2_ENABLE_TEST_MODEL=1");
    }

    const OpenAiServerConfig config = make_server_config(options);
    auto server = std::make_shared<OpenAiServer>(config);

    HttpServerOptions http_options;
    http_options.host = options.host;
    http_options.port = options.port;
    http_options.num_threads = options.num_http_threads;
    http_options.max_body_bytes = options.max_request_body_bytes;
    HttpServer http(http_options, [server](HttpRequest request, std::shared_ptr<ResponseWriter> writer) {
        server->handle(std::move(request), std::move(writer));
    });
    http.start();
    K2_INFO("Starting k2 API server on http://{}:{} (/health answers 503 until the model is loaded)", options.host,
            http.port());

    auto tokenizer = Tokenizer::load(options.model);
    Backend backend = make_backend(options, tokenizer, server);
    for (const auto& engine : backend.engines) {
        engine->start();
    }
    const std::shared_ptr<Engine> engine = backend.engines.front();
    EngineHandle handle{engine, tokenizer, nullptr};
    if (backend.engines.size() > 1) {
        handle.replicas = std::make_shared<ReplicaRouter>(backend.engines);
    }
    server->set_engine(handle);
    K2_INFO("Model {} served as {}; max_model_len {}; {} engine(s)", options.model,
            fmt::join(config.served_model_names, ", "), engine->max_model_len(), backend.engines.size());
    K2_INFO(
        "Application startup complete. Routes: /v1/chat/completions, /v1/completions, /v1/models, /tokenize, "
        "/detokenize, /health, /ping, /version, /metrics");
    {
        std::vector<std::unique_ptr<StatsLogger>> stats_loggers;
        for (size_t i = 0; i < backend.engines.size(); ++i) {
            stats_loggers.push_back(std::make_unique<StatsLogger>(backend.engines[i], options.log_stats_interval_s,
                                                                  static_cast<int>(i)));
        }
        int signal_number = 0;
        sigwait(&signals, &signal_number);
        K2_INFO("Received signal {}: no new connections; draining {} running request(s)",
                signal_number == SIGINT ? "SIGINT" : "SIGTERM", server->num_active_requests());
        http.stop_accepting();
        const auto drain_deadline = std::chrono::steady_clock::now() +
                                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                        std::chrono::duration<double>(options.shutdown_timeout_s));
        for (const auto& replica : backend.engines) {
            replica->stop(/*drain=*/true, drain_deadline);
        }
        // The last outputs still have to reach their clients.
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (server->num_active_requests() > 0 && std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }
    http.stop();
    if (backend.executor) {
        backend.executor->shutdown("the server is shutting down");
    }
    K2_INFO("Shutdown complete.");
    return 0;
}

}  // namespace k2::server

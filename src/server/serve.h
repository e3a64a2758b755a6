// `k2 serve`: everything the server needs from the command line, and the blocking entry point.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "executor/parallel_job.h"

namespace k2::server {

struct ServeOptions {
    std::string model = "tests/fixtures/tiny-kimi-k2";  // checkpoint directory or hub id (org/name)
    std::string revision;                               // hub id only: branch, tag or commit in the HF cache
    std::string download_dir;                           // hub id only: cache root instead of $HF_HOME/hub
    std::vector<std::string> served_model_names;        // empty: the model argument
    std::string host = "0.0.0.0";
    int port = 8000;
    std::vector<std::string> api_keys;  // empty: no authentication
    bool enable_auto_tool_choice = false;
    std::string tool_call_parser;  // "" or "kimi_k2"
    std::string chat_template;     // file or inline template; "" = the checkpoint's (else Kimi-K2's)
    std::string response_role = "assistant";
    // Engine.
    int max_model_len = 0;  // 0: from config.json
    int max_num_seqs = 256;
    int max_num_batched_tokens = 8192;
    int num_gpu_blocks_override = 0;
    size_t kv_cache_memory_bytes = 1ull << 30;  // CPU budget; on a GPU only when kv_cache_memory_bytes_set
    bool kv_cache_memory_bytes_set = false;
    double gpu_memory_utilization = 0.9;  // GPU: the KV cache takes what weights + activations leave of this share
    bool enforce_eager = false;
    int max_logprobs = 20;
    uint64_t seed = 0;
    bool enable_prefix_caching = true;
    int max_num_queued_reqs = 4096;  // waiting-queue bound; beyond it 503
    std::string scheduling_policy = "fcfs";
    bool async_scheduling = false;  // --async-scheduling: schedule step k+1 while the model runs step k
    std::string device = "cpu";
    std::string kv_cache_dtype = "auto";
    std::string generation_config = "auto";  // "auto" (the model's), "vllm" (none) or a directory
    // Parallel job (-tp/-pp/-dp/-dcp, vLLM's flags; docs/parallelism.md): world size 1 runs in this process.
    executor::ParallelJob parallel;
    bool headless = false;  // --headless: only start this node's ranks (parallel.dp_start > 0), no API server
    // HTTP.
    size_t max_request_body_bytes = 32u << 20;
    int num_http_threads = 4;
    int max_n = 128;  // upper bound of a request's n (CVE-2026-34756: unbounded fan-out)
    bool enable_log_requests = false;
    bool enable_force_include_usage = false;
    bool disable_web_ui = false;  // no chat page at / and /chat
    double log_stats_interval_s = 10.0;
    // SIGTERM/SIGINT: running requests get this long to finish, then are aborted (vLLM's --shutdown-timeout).
    double shutdown_timeout_s = 30.0;
    // Test only: a JSON file of scripted outputs replaces the model (needs K2_ENABLE_TEST_MODEL=1).
    std::string test_scripted_output;
};

// Loads the model, serves until SIGTERM/SIGINT, drains running requests and returns the exit code.
int run_serve(const ServeOptions& options);

}  // namespace k2::server

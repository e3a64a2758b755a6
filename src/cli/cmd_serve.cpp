// `k2 serve [MODEL]`: vLLM's `vllm serve` flags (reference/vllm.md §1.1), an OpenAI-compatible server.
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>

#include "cli/commands.h"
#include "cli/demo_model.h"
#include "cli/net_ports.h"
#include "core/error.h"
#include "core/log.h"
#include "io/model_path.h"
#include "server/openai_protocol.h"
#include "server/serve.h"

namespace k2::cli {

namespace {

// Raw flag values that need checking or conversion after parsing.
struct ServeFlags {
    server::ServeOptions options;
    std::string max_model_len;
    std::string max_num_batched_tokens;
    std::string kv_cache_memory_bytes;
    std::string max_request_body_bytes;
    std::vector<std::string> api_keys;
    int tensor_parallel_size = 1;
    int pipeline_parallel_size = 1;
    int data_parallel_size = 1;
    int data_parallel_size_local = 0;
    std::string data_parallel_address;
    int data_parallel_rpc_port = 29550;
    int data_parallel_start_rank = -1;
    int data_parallel_rank = -1;
    std::string data_parallel_backend = "mp";
    int decode_context_parallel_size = 1;
    int api_server_count = 1;
    bool headless = false;
    bool enable_expert_parallel = false;
    std::string master_addr = "127.0.0.1";
    int master_port = 0;  // 0: a free port pair on master_addr (one node), 29501 (vLLM's default) with --nnodes
    int nnodes = 1;
    int node_rank = 0;
    std::string dtype = "auto";
    std::string quantization;
    std::string tokenizer_mode = "auto";
    double gpu_memory_utilization = 0.9;
    bool trust_remote_code = false;
    bool enable_chunked_prefill = true;
    bool disable_log_requests = false;
    bool disable_log_stats = false;
    bool enforce_eager = false;
    int block_size = 0;
};

// vLLM's parallel flags: the layout, and clear errors for what this server does not do.
dist::ParallelConfig make_parallel_config(const ServeFlags& f) {
    dist::ParallelConfig c;
    c.tensor_parallel_size = f.tensor_parallel_size;
    c.pipeline_parallel_size = f.pipeline_parallel_size;
    c.data_parallel_size = f.data_parallel_size;
    c.decode_context_parallel_size = f.decode_context_parallel_size;
    c.enable_expert_parallel = f.enable_expert_parallel;
    c.validate();
    K2_CHECK(f.api_server_count <= 1,
             "--api-server-count {}: this server runs one API server process (DP replicas share it)",
             f.api_server_count);
    K2_CHECK(f.data_parallel_rank < 0,
             "--data-parallel-rank (external load balancing, one engine per API server) is not supported; use "
             "--data-parallel-size with --data-parallel-size-local / --data-parallel-start-rank / --headless");
    K2_CHECK(f.data_parallel_backend == "mp" || f.data_parallel_backend == "ray",
             "--data-parallel-backend must be mp or ray, got {}", f.data_parallel_backend);
    K2_CHECK(f.data_parallel_backend == "mp", "--data-parallel-backend ray is not supported; use mp (processes)");
    if (c.world_size() > 1) {
        // GPUs: tensor parallelism over NCCL (and peer memory), one GPU per rank (rank % visible GPUs), with decode
        // context parallelism inside the TP group, DP replicas, and expert parallelism over the TP group or over
        // every (dp, tp) rank; the CUDA model refuses shards that miss its FP8 blocks. PP on GPUs is not implemented.
        K2_CHECK(f.options.device == "cpu" || c.pipeline_parallel_size == 1,
                 "--device cuda runs -tp, -dp, --enable-expert-parallel and -dcp, not -pp (got PP={}); the CPU "
                 "backend (--device cpu) runs -tp/-pp/-dp/-dcp as one process per rank",
                 c.pipeline_parallel_size);
        K2_CHECK(f.options.test_scripted_output.empty(),
                 "--test-scripted-output runs without ranks; drop the parallel flags");
    }
    return c;
}

// Which ranks this node hosts and where the job meets (reference/vllm.md §1.3; docs/parallelism.md).
executor::ParallelJob make_parallel_job(const ServeFlags& f) {
    executor::ParallelJob job;
    job.config = make_parallel_config(f);
    const dist::ParallelConfig& c = job.config;
    job.nnodes = f.nnodes;
    job.node_rank = f.node_rank;
    job.dp_start = std::max(f.data_parallel_start_rank, 0);
    job.dp_local = f.data_parallel_size_local > 0 ? f.data_parallel_size_local : c.data_parallel_size - job.dp_start;
    K2_CHECK(!f.headless || !job.hosts_rank_zero(),
             "--headless starts the ranks another node's API server drives: pass --data-parallel-start-rank (the "
             "first replica on this node, > 0) and --data-parallel-address, or --nnodes with --node-rank (> 0)");
    K2_CHECK(f.headless || job.dp_start == 0,
             "--data-parallel-start-rank {} without --headless (an API server per node, vLLM's hybrid load "
             "balancing) is not supported; start the other nodes with --headless",
             job.dp_start);
    K2_CHECK(f.headless || job.node_rank == 0,
             "--node-rank {} runs no API server: start it with --headless (its ranks join node 0's job)",
             job.node_rank);
    if (job.nnodes > 1) {
        // TP/PP across nodes: every node meets at --master-addr:--master-port (control on the next port).
        job.master_addr = f.master_addr;
        job.master_port = f.master_port > 0 ? f.master_port : 29501;
    } else if (job.dp_local < c.data_parallel_size) {
        // DP across nodes: every node meets at the head node's DP address: rendezvous on the rpc port, control on
        // rpc port + 1.
        job.master_addr = f.data_parallel_address.empty() ? "127.0.0.1" : f.data_parallel_address;
        job.master_port = f.data_parallel_rpc_port;
    } else if (c.world_size() > 1) {
        job.master_addr = f.master_addr;
        job.master_port = f.master_port > 0 ? f.master_port : free_port_pair(f.master_addr);
    }
    if (f.headless)  // this node's address for the collectives
        job.host_addr = f.options.host != "0.0.0.0" ? f.options.host : local_address_towards(job.master_addr);
    job.validate();
    return job;
}

void check_model_flags(const ServeFlags& f) {
    const server::ServeOptions& o = f.options;
    K2_CHECK(o.device == "cpu" || o.device == "cuda", "--device must be cpu or cuda, got {}", o.device);
    if (o.device == "cuda") {
        K2_CHECK(std::filesystem::exists("/dev/nvidia0") || std::filesystem::exists("/dev/nvidiactl"),
                 "--device cuda: no NVIDIA GPU is visible on this machine (no /dev/nvidia0); use --device cpu");
    }
    K2_CHECK(f.dtype == "auto" || f.dtype == "bfloat16" || f.dtype == "half" || f.dtype == "float16" ||
                 f.dtype == "float" || f.dtype == "float32",
             "--dtype must be auto, bfloat16, half, float16, float or float32, got {}", f.dtype);
    K2_CHECK(f.tokenizer_mode == "auto" || f.tokenizer_mode == "hf" || f.tokenizer_mode == "slow" ||
                 f.tokenizer_mode == "custom",
             "--tokenizer-mode must be auto, hf, slow or custom, got {}", f.tokenizer_mode);
    K2_CHECK(f.gpu_memory_utilization > 0.0 && f.gpu_memory_utilization <= 1.0,
             "--gpu-memory-utilization must be in (0, 1], got {}", f.gpu_memory_utilization);
    K2_CHECK(o.tool_call_parser.empty() || o.tool_call_parser == "kimi_k2",
             "--tool-call-parser {} is not available (available: kimi_k2)", o.tool_call_parser);
    K2_CHECK(!o.enable_auto_tool_choice || !o.tool_call_parser.empty(),
             "--enable-auto-tool-choice requires --tool-call-parser");
    K2_CHECK(o.max_num_batched_tokens >= o.max_num_seqs,
             "max_num_batched_tokens ({}) must be greater than or equal to max_num_seqs ({}).",
             o.max_num_batched_tokens, o.max_num_seqs);
    K2_CHECK(f.block_size == 0 || f.block_size == 64, "--block-size {}: MLA uses 64-token KV blocks", f.block_size);
    // A hub id is looked up in the local HF cache; the error says where it looked.
    const std::filesystem::path dir = resolve_model_path(o.model, o.revision, o.download_dir);
    const std::filesystem::path config = dir / "config.json";
    K2_CHECK(std::filesystem::exists(config),
             "model {}: no config.json in {}; pass a checkpoint directory (config.json, *.safetensors, tiktoken.model)",
             o.model, dir.string());
    if (!f.quantization.empty()) {
        K2_CHECK(f.quantization == "fp8", "--quantization {} is not supported (only fp8)", f.quantization);
        const std::string text = [&] {
            std::ifstream in(config);
            return std::string(std::istreambuf_iterator<char>(in), {});
        }();
        K2_CHECK(text.find("\"quant_method\"") != std::string::npos && text.find("\"fp8\"") != std::string::npos,
                 "--quantization fp8 does not match the checkpoint: {} has no quantization_config with quant_method "
                 "fp8",
                 config.string());
    }
}

}  // namespace

void add_serve_command(CLI::App& app) {
    auto flags = std::make_shared<ServeFlags>();
    server::ServeOptions& o = flags->options;
    CLI::App* cmd = app.add_subcommand("serve", "Serve a model with an OpenAI-compatible HTTP API (vLLM's flags)");
    cmd->add_option("model", o.model,
                    "Checkpoint directory, or a hub id (org/name) from the local HF cache (default: the demo model "
                    "models/kimi-k2-demo, served as kimi-k2-demo)");
    cmd->add_option("--revision", o.revision, "Hub id only: branch, tag or commit of the cached snapshot");
    cmd->add_option("--download-dir", o.download_dir, "Hub id only: Hugging Face cache root to look in");
    cmd->add_option("--served-model-name", o.served_model_names,
                    "Model name(s) in the API; the first is echoed in responses (default: MODEL)");
    cmd->add_option("--host", o.host, "Bind address")->capture_default_str();
    cmd->add_option("--port", o.port, "Port")->capture_default_str();
    cmd->add_option("--api-key", flags->api_keys,
                    "Require `Authorization: Bearer KEY` on /v1 routes (also VLLM_API_KEY / K2_API_KEY)");
    cmd->add_flag("--enable-auto-tool-choice", o.enable_auto_tool_choice, "Let the model decide to call tools");
    cmd->add_option("--tool-call-parser", o.tool_call_parser, "Tool-call parser: kimi_k2");
    cmd->add_option("--chat-template", o.chat_template, "Chat template file or inline Jinja (default: the model's)");
    cmd->add_option("--response-role", o.response_role, "Role of generated messages")->capture_default_str();
    cmd->add_option("--max-model-len", flags->max_model_len, "Context length (32k = 32000, 32K = 32768)");
    cmd->add_option("--max-num-seqs", o.max_num_seqs, "Max requests per step")->capture_default_str();
    cmd->add_option("--max-num-batched-tokens", flags->max_num_batched_tokens, "Token budget per step (8192; 8k, 8K)");
    cmd->add_option("--num-gpu-blocks-override", o.num_gpu_blocks_override, "Number of KV blocks (0: from memory)");
    cmd->add_option("--kv-cache-memory-bytes", flags->kv_cache_memory_bytes, "KV cache budget in bytes (1G, 512M)");
    cmd->add_option("--max-logprobs", o.max_logprobs, "Max logprobs per token (-1: vocabulary size)")
        ->capture_default_str();
    cmd->add_option("--seed", o.seed, "Seed for requests without one")->capture_default_str();
    cmd->add_flag("--enable-prefix-caching,!--no-enable-prefix-caching", o.enable_prefix_caching,
                  "Automatic prefix caching (default on)");
    cmd->add_flag("--enable-chunked-prefill,!--no-enable-chunked-prefill", flags->enable_chunked_prefill,
                  "Chunked prefill (always on, as in vLLM)");
    cmd->add_option("--max-num-queued-reqs", o.max_num_queued_reqs, "Waiting-queue bound; beyond it 503")
        ->capture_default_str();
    cmd->add_option("--scheduling-policy", o.scheduling_policy, "fcfs or priority")->capture_default_str();
    cmd->add_flag("--async-scheduling", o.async_scheduling, "Schedule step k+1 while the model runs step k");
    cmd->add_option("--device", o.device, "cpu or cuda")->capture_default_str();
    cmd->add_option("--dtype", flags->dtype, "auto, bfloat16, half, float")->capture_default_str();
    cmd->add_option("-q,--quantization", flags->quantization, "fp8 (must agree with the checkpoint)");
    cmd->add_option("--kv-cache-dtype", o.kv_cache_dtype, "auto, fp8, fp8_e4m3, bfloat16")->capture_default_str();
    cmd->add_option("--gpu-memory-utilization", flags->gpu_memory_utilization, "Fraction of GPU memory to use")
        ->capture_default_str();
    cmd->add_option("--generation-config", o.generation_config, "auto (the model's), vllm (none) or a directory")
        ->capture_default_str();
    cmd->add_flag("--trust-remote-code", flags->trust_remote_code, "Accepted for vLLM compatibility (no code is run)");
    cmd->add_option("--tokenizer-mode", flags->tokenizer_mode, "auto, hf, slow")->capture_default_str();
    cmd->add_flag("--enable-log-requests", o.enable_log_requests, "Log every request");
    cmd->add_flag("--disable-log-requests", flags->disable_log_requests,
                  "Deprecated: requests are not logged by default");
    cmd->add_flag("--disable-log-stats", flags->disable_log_stats, "No periodic throughput lines");
    cmd->add_option("--shutdown-timeout", o.shutdown_timeout_s,
                    "Seconds running requests get to finish after SIGTERM/SIGINT before they are aborted")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    cmd->add_flag("--enable-force-include-usage", o.enable_force_include_usage, "Usage chunk in every stream");
    cmd->add_flag("--disable-web-ui", o.disable_web_ui, "No chat page at / and /chat (the API is unchanged)");
    cmd->add_flag("--enforce-eager", flags->enforce_eager, "CUDA: no CUDA graphs (every decode step runs eagerly)");
    cmd->add_option("--block-size", flags->block_size, "KV block size (MLA: 64)");
    cmd->add_option("--max-request-body-bytes", flags->max_request_body_bytes, "Larger bodies get 413 (default 32M)");
    cmd->add_option("--tensor-parallel-size", flags->tensor_parallel_size, "TP size (-tp)")->capture_default_str();
    cmd->add_option("--pipeline-parallel-size", flags->pipeline_parallel_size, "PP size (-pp)")->capture_default_str();
    cmd->add_option("--data-parallel-size", flags->data_parallel_size, "DP size (-dp)")->capture_default_str();
    cmd->add_option("--data-parallel-size-local", flags->data_parallel_size_local, "DP replicas on this node (-dpl)");
    cmd->add_option("--data-parallel-address", flags->data_parallel_address, "DP head address (-dpa)");
    cmd->add_option("--data-parallel-rpc-port", flags->data_parallel_rpc_port, "DP handshake port (-dpp)");
    cmd->add_option("--data-parallel-start-rank", flags->data_parallel_start_rank, "First DP rank here (-dpr)");
    cmd->add_option("--data-parallel-rank", flags->data_parallel_rank, "Explicit DP rank (-dpn)");
    cmd->add_option("--data-parallel-backend", flags->data_parallel_backend, "mp or ray (-dpb)");
    cmd->add_option("--decode-context-parallel-size", flags->decode_context_parallel_size, "DCP size (-dcp)")
        ->capture_default_str();
    cmd->add_option("--api-server-count", flags->api_server_count, "API server processes (-asc)");
    cmd->add_flag("--headless", flags->headless,
                  "Engines only, no API server: this node's ranks (replicas -dpr/-dpl, or --node-rank) of the "
                  "head node's job");
    cmd->add_option("--master-addr", flags->master_addr, "Rank 0's address for rendezvous and control")
        ->capture_default_str();
    cmd->add_option("--master-port", flags->master_port,
                    "Rendezvous port (control: +1); default a free pair, 29501 with --nnodes");
    cmd->add_option("--nnodes", flags->nnodes, "Nodes the ranks of every replica are split over (TP/PP across nodes)")
        ->capture_default_str();
    cmd->add_option("--node-rank", flags->node_rank, "This node's index among --nnodes (> 0: with --headless)")
        ->capture_default_str();
    cmd->add_flag("--enable-expert-parallel", flags->enable_expert_parallel, "Partition MoE experts over TP x DP");
    // TEST ONLY, hidden: replaces the model with scripted output; also needs K2_ENABLE_TEST_MODEL=1.
    cmd->add_option("--test-scripted-output", o.test_scripted_output,
                    "TEST ONLY: scripted outputs instead of the model (needs K2_ENABLE_TEST_MODEL=1)")
        ->group("");
    cmd->callback([flags, cmd] {
        ServeFlags& f = *flags;
        server::ServeOptions& opts = f.options;
        if (cmd->count("model") == 0) {
            opts.model = demo_model_dir().string();
            if (opts.served_model_names.empty())
                opts.served_model_names = {std::string(kDemoModelName)};
        }
        if (!f.max_model_len.empty()) {
            opts.max_model_len = static_cast<int>(server::parse_human_int(f.max_model_len, "--max-model-len"));
        }
        if (!f.max_num_batched_tokens.empty()) {
            opts.max_num_batched_tokens =
                static_cast<int>(server::parse_human_int(f.max_num_batched_tokens, "--max-num-batched-tokens"));
        }
        if (!f.kv_cache_memory_bytes.empty()) {
            opts.kv_cache_memory_bytes =
                static_cast<size_t>(server::parse_human_int(f.kv_cache_memory_bytes, "--kv-cache-memory-bytes"));
            opts.kv_cache_memory_bytes_set = true;
        }
        if (!f.max_request_body_bytes.empty()) {
            opts.max_request_body_bytes =
                static_cast<size_t>(server::parse_human_int(f.max_request_body_bytes, "--max-request-body-bytes"));
        }
        opts.gpu_memory_utilization = f.gpu_memory_utilization;
        opts.enforce_eager = f.enforce_eager;
        opts.api_keys = f.api_keys;
        for (const char* env : {"VLLM_API_KEY", "K2_API_KEY"}) {
            const char* value = std::getenv(env);
            if (opts.api_keys.empty() && value != nullptr && *value != '\0')
                opts.api_keys.emplace_back(value);
        }
        if (f.disable_log_requests) {
            K2_WARN(
                "--disable-log-requests is deprecated: requests are not logged unless --enable-log-requests is set");
        }
        if (f.disable_log_stats)
            opts.log_stats_interval_s = 0;
        opts.parallel = make_parallel_job(f);
        opts.headless = f.headless;
        check_model_flags(f);
        const int code = server::run_serve(opts);
        if (code != 0)
            throw CLI::RuntimeError(code);
    });
}

}  // namespace k2::cli

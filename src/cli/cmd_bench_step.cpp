// `k2 bench step MODEL`: one model's prefill and decode steps timed in isolation on the device it runs on, with the
// HBM floor of a decode step (bytes it must read over the copy rate measured in the same run) — the numbers behind
// docs/perf/e2e.md. --layers L times the checkpoint's first L layers (so two runs give one layer's cost by
// difference, CUDA graphs included).
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>

#include "cli/commands.h"
#include "cli/net_ports.h"
#include "core/error.h"
#include "core/log.h"
#include "dist/gloo_communicator.h"
#include "dist/parallel.h"
#include "io/model_path.h"
#include "model/model.h"
#ifdef K2_HAVE_CUDA_MODEL
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/device_copy.h"
#include "model/cuda/deepseek_v3_cuda.h"
#endif

namespace k2::cli {

namespace {

namespace fs = std::filesystem;

struct StepOptions {
    std::string model;
    std::string device = "cuda";
    std::string kv_cache_dtype = "auto";
    int layers = 0;  // 0: all
    int batch = 16;
    int context = 8192;
    int decode_steps = 20;
    int warmup = 3;
    int prefill_tokens = 8192;
    int prefill_runs = 3;
    bool enforce_eager = false;
    bool profile_layers = false;
    std::string output_json;
    // Parallel runs: one process per rank on this host (rank r on GPU r), rank 0 reports.
    int tensor_parallel_size = 1;
    int data_parallel_size = 1;  // replicas run the same batches; with EP their MoE layers exchange tokens
    int decode_context_parallel_size = 1;
    bool enable_expert_parallel = false;
};

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

// A view of `dir` with config.json's num_hidden_layers set to `layers` (the shards are symlinked; the loader then
// reads only the first `layers` layers and ignores the rest).
fs::path with_layers(const fs::path& dir, int layers) {
    nlohmann::json config = nlohmann::json::parse(std::ifstream(dir / "config.json"));
    K2_CHECK(layers <= config.at("num_hidden_layers").get<int>(), "--layers {}: {} has only {} layers", layers,
             (dir / "config.json").string(), config.at("num_hidden_layers").get<int>());
    config["num_hidden_layers"] = layers;
    const fs::path view = fs::temp_directory_path() / fmt::format("k2-bench-step-{}-{}", getpid(), layers);
    fs::remove_all(view);
    fs::create_directories(view);
    for (const auto& entry : fs::directory_iterator(dir)) {
        if (entry.path().filename() != "config.json") {
            fs::create_symlink(fs::absolute(entry.path()), view / entry.path().filename());
        }
    }
    std::ofstream(view / "config.json") << config.dump(1);
    return view;
}

// One sequence's chunk on its own blocks [first_block, ...).
struct Seq {
    std::vector<int32_t> blocks;
    int32_t length = 0;
};

ForwardBatch decode_batch(std::vector<Seq>& seqs, std::mt19937& rng, int vocab) {
    ForwardBatch b;
    b.query_start.push_back(0);
    b.max_blocks_per_seq = static_cast<int32_t>(seqs.front().blocks.size());
    for (size_t s = 0; s < seqs.size(); ++s) {
        Seq& q = seqs[s];
        b.token_ids.push_back(static_cast<int32_t>(rng() % static_cast<unsigned>(vocab)));
        b.positions.push_back(q.length);
        b.slot_mapping.push_back(static_cast<int64_t>(q.blocks[static_cast<size_t>(q.length / kKvBlockSize)]) *
                                     kKvBlockSize +
                                 q.length % kKvBlockSize);
        q.length += 1;
        b.seq_lens.push_back(q.length);
        b.query_start.push_back(static_cast<int32_t>(s + 1));
        b.block_tables.insert(b.block_tables.end(), q.blocks.begin(), q.blocks.end());
        b.logits_indices.push_back(static_cast<int32_t>(s));
    }
    return b;
}

ForwardBatch prefill_batch(const Seq& seq, int tokens, std::mt19937& rng, int vocab) {
    ForwardBatch b;
    b.query_start = {0, tokens};
    b.max_blocks_per_seq = static_cast<int32_t>(seq.blocks.size());
    b.block_tables = seq.blocks;
    b.seq_lens = {tokens};
    for (int t = 0; t < tokens; ++t) {
        b.token_ids.push_back(static_cast<int32_t>(rng() % static_cast<unsigned>(vocab)));
        b.positions.push_back(t);
        b.slot_mapping.push_back(
            static_cast<int64_t>(seq.blocks[static_cast<size_t>(t / kKvBlockSize)]) * kKvBlockSize + t % kKvBlockSize);
    }
    b.logits_indices = {tokens - 1};
    return b;
}

// Bytes one decode step must read on one rank (rank 0 of a parallel run): every weight it touches once and its
// part of the latent cache. active_experts: this rank's routed experts with rows in a MoE layer. TP splits the
// heads' projections, the MLPs, each expert (unless EP holds them whole) and lm_head; q_a / kv_a and the router
// stay whole on every rank; the latent cache is whole on every TP rank unless DCP splits it by token.
double decode_bytes(const ModelConfig& c, const StepOptions& o, int active_experts, size_t cache_elem) {
    const double tp = o.tensor_parallel_size;
    const double hidden = static_cast<double>(c.hidden_size);
    const double heads = static_cast<double>(c.num_attention_heads) / tp;
    const double attn = static_cast<double>(c.q_lora_rank) * hidden +
                        heads * static_cast<double>(c.qk_head_dim()) * static_cast<double>(c.q_lora_rank) +
                        static_cast<double>(c.kv_lora_rank + c.qk_rope_head_dim) * hidden +
                        hidden * heads * static_cast<double>(c.v_head_dim) +
                        2.0 * heads * static_cast<double>(c.qk_nope_head_dim + c.v_head_dim) *
                            static_cast<double>(c.kv_lora_rank);  // W_UK, W_UV in bf16
    const double expert = 3.0 * static_cast<double>(c.moe_intermediate_size) * hidden;
    const double routed = o.enable_expert_parallel ? expert : expert / tp;
    const double cache = static_cast<double>(o.batch) * o.context *
                         static_cast<double>(c.kv_lora_rank + c.qk_rope_head_dim) * static_cast<double>(cache_elem) /
                         o.decode_context_parallel_size;
    double total = 2.0 * hidden * static_cast<double>(c.vocab_size) / tp;  // lm_head (bf16)
    for (int l = 0; l < c.num_hidden_layers; ++l) {
        total += attn + cache;
        if (c.is_moe_layer(l)) {
            total += 2.0 * static_cast<double>(c.n_routed_experts) * hidden +
                     expert / tp * static_cast<double>(c.n_shared_experts) + routed * active_experts;
        } else {
            total += 3.0 * static_cast<double>(c.intermediate_size) * hidden / tp;
        }
    }
    return total;
}

// Medians over the profiled steps of per-layer [a, b] pairs: [[a, b] per layer].
nlohmann::ordered_json layer_medians(const std::vector<std::vector<float>>& runs) {
    nlohmann::ordered_json layers = nlohmann::ordered_json::array();
    for (size_t l = 0; !runs.empty() && l + 1 < runs.front().size(); l += 2) {
        std::vector<double> a, b;
        for (const auto& run : runs) {
            a.push_back(run[l]);
            b.push_back(run[l + 1]);
        }
        layers.push_back({median(a), median(b)});
    }
    return layers;
}

// Per-layer profiles of the profiled steps: [layers, 2] each (see the model's last_*_times_ms).
struct Profiles {
    std::vector<std::vector<float>> decode;
    std::vector<std::vector<float>> prefill;
    std::vector<std::vector<float>> decode_comm;
    std::vector<std::vector<float>> decode_ep;  // [moe layers, 2]: DP + EP all-gather, reduce-scatter
};

void report(const StepOptions& o, const ModelConfig& c, double load_s, double copy_rate,
            const std::vector<double>& prefill_s, double fill_s, const std::vector<double>& step_s,
            const Profiles& profiles, int active_experts) {
    const double prefill = median(prefill_s);
    const double step = median(step_s);
    const size_t cache_elem = o.kv_cache_dtype == "fp8" ? 1 : 2;
    const double bytes = decode_bytes(c, o, active_experts, cache_elem);
    const double floor_s = copy_rate > 0.0 ? bytes / copy_rate : 0.0;
    nlohmann::ordered_json j;
    j["model"] = o.model;
    j["device"] = o.device;
    j["layers"] = c.num_hidden_layers;
    j["moe_layers"] = [&c] {
        int n = 0;
        for (int l = 0; l < c.num_hidden_layers; ++l)
            n += c.is_moe_layer(l);
        return n;
    }();
    j["tensor_parallel_size"] = o.tensor_parallel_size;
    j["data_parallel_size"] = o.data_parallel_size;
    j["decode_context_parallel_size"] = o.decode_context_parallel_size;
    j["expert_parallel"] = o.enable_expert_parallel;
    j["kv_cache_dtype"] = o.kv_cache_dtype;
    j["cuda_graphs"] = !o.enforce_eager;
    j["batch"] = o.batch;
    j["context"] = o.context;
    j["load_s"] = load_s;
    j["copy_rate_bytes_per_s"] = copy_rate;
    j["prefill_tokens"] = o.prefill_tokens;
    j["prefill_s_median"] = prefill;
    j["prefill_s_all"] = prefill_s;
    j["prefill_tokens_per_s_per_layer"] = prefill > 0 ? o.prefill_tokens / (prefill / c.num_hidden_layers) : 0.0;
    j["context_fill_s"] = fill_s;
    j["decode_step_s_median"] = step;
    j["decode_step_s_min"] = step_s.empty() ? 0.0 : *std::min_element(step_s.begin(), step_s.end());
    j["decode_step_s_all"] = step_s;
    j["active_experts_last_moe_layer"] = active_experts;  // on rank 0 (EP: of its own experts)
    j["decode_bytes"] = bytes;
    j["decode_floor_s"] = floor_s;
    j["decode_step_over_floor"] = floor_s > 0 ? step / floor_s : 0.0;
    // Per layer: [attention ms, feed-forward ms] (each with its all-reduce), medians over the profiled steps; and
    // of that, the all-reduces alone as rank 0 saw them.
    if (!profiles.decode.empty())
        j["decode_layer_attn_ffn_ms"] = layer_medians(profiles.decode);
    if (!profiles.prefill.empty())
        j["prefill_layer_attn_ffn_ms"] = layer_medians(profiles.prefill);
    if (!profiles.decode_comm.empty() && !profiles.decode_comm.front().empty())
        j["decode_layer_allreduce_ms"] = layer_medians(profiles.decode_comm);
    if (!profiles.decode_ep.empty() && !profiles.decode_ep.front().empty())
        j["decode_moe_layer_ep_allgather_reducescatter_ms"] = layer_medians(profiles.decode_ep);
    std::printf("%s\n", j.dump(2).c_str());
    std::printf(
        "decode: %.3f ms/step (batch %d, context %d, %d layers), floor %.3f ms (%.2f GB at %.0f GB/s) -> %.2fx\n",
        step * 1e3, o.batch, o.context, static_cast<int>(c.num_hidden_layers), floor_s * 1e3, bytes / 1e9,
        copy_rate / 1e9, floor_s > 0 ? step / floor_s : 0.0);
    std::printf("prefill: %d tokens in %.3f s = %.0f tokens/s per layer\n", o.prefill_tokens, prefill,
                prefill > 0 ? o.prefill_tokens / (prefill / c.num_hidden_layers) : 0.0);
    if (!o.output_json.empty()) {
        std::ofstream out(o.output_json);
        K2_CHECK(out.good(), "--output-json: cannot write {}", o.output_json);
        out << j.dump(2) << "\n";
    }
}

#ifdef K2_HAVE_CUDA_MODEL
// The SM copy kernel's rate over 1 GiB, bytes read + written per second (the project's "HBM copy rate").
double measure_copy_rate() {
    constexpr size_t kBytes = size_t{1} << 30;
    cuda::DeviceBuffer a(kBytes);
    cuda::DeviceBuffer b(kBytes);
    a.fill_bytes(0);
    const cuda::DeviceCopyParams p{a.data(), b.data(), static_cast<int64_t>(kBytes)};
    cudaEvent_t start = nullptr;
    cudaEvent_t stop = nullptr;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    cuda::launch_device_copy(p, nullptr);
    std::vector<double> rates;
    for (int i = 0; i < 10; ++i) {
        CUDA_CHECK(cudaEventRecord(start, nullptr));
        cuda::launch_device_copy(p, nullptr);
        CUDA_CHECK(cudaEventRecord(stop, nullptr));
        CUDA_CHECK(cudaEventSynchronize(stop));
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        rates.push_back(2.0 * static_cast<double>(kBytes) / (ms * 1e-3));
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return median(rates);
}
#else
double measure_copy_rate() {
    return 0.0;
}
#endif

// One rank's run (groups: null on one rank). Every rank runs the same steps (the same seeded batches: forward is
// collective); rank 0 reports.
void run_rank(const StepOptions& o, std::shared_ptr<dist::ParallelGroups> groups) {
    const bool reporter = groups == nullptr || groups->rank == 0;
    fs::path dir = resolve_model_path(o.model);
    if (o.layers > 0) {
        dir = with_layers(dir, o.layers);
    }
    K2_CHECK(o.batch >= 1 && o.context >= 1 && o.prefill_tokens >= 1,
             "--batch, --context and --prefill-tokens must be >= 1");
    ModelOptions options;
    options.device = o.device;
    options.kv_cache_dtype = o.kv_cache_dtype == "fp8"        ? KvCacheDType::FP8_E4M3
                             : o.kv_cache_dtype == "bfloat16" ? KvCacheDType::BF16
                                                              : KvCacheDType::F32;
    options.max_num_tokens = std::max({o.prefill_tokens, o.context, o.batch});
    options.max_model_len = o.context + o.decode_steps + o.warmup + 64;
    options.max_num_seqs = o.batch;
    options.enforce_eager = o.enforce_eager;
    options.parallel = std::move(groups);
    const auto load_start = Clock::now();
    std::unique_ptr<Model> model = load_model(dir, options);
    const double load_s = seconds_since(load_start);
    const ModelConfig& c = model->config();
    const double copy_rate = o.device == "cuda" ? measure_copy_rate() : 0.0;

    // Blocks: one region per decode sequence (context + steps), then the prefill sequence's.
    const int per_seq = (options.max_model_len + kKvBlockSize - 1) / kKvBlockSize;
    const int prefill_blocks = (o.prefill_tokens + kKvBlockSize - 1) / kKvBlockSize;
    model->allocate_kv_cache(o.batch * per_seq + prefill_blocks);
    std::vector<Seq> seqs(static_cast<size_t>(o.batch));
    for (int s = 0; s < o.batch; ++s) {
        for (int i = 0; i < per_seq; ++i) {
            seqs[static_cast<size_t>(s)].blocks.push_back(s * per_seq + i);
        }
    }
    Seq prefill_seq;
    for (int i = 0; i < prefill_blocks; ++i) {
        prefill_seq.blocks.push_back(o.batch * per_seq + i);
    }
    // DP replicas draw different tokens (the same ones would route to the same experts and understate the MoE).
    std::mt19937 rng(1234 + (options.parallel != nullptr ? options.parallel->coord.dp : 0));
    const int vocab = static_cast<int>(c.vocab_size);
    // Every replica runs the same batches (ForwardBatch::dp_num_tokens: the same count everywhere).
    const auto padded = [&](ForwardBatch b) {
        if (o.data_parallel_size > 1) {
            b.dp_num_tokens.assign(static_cast<size_t>(o.data_parallel_size), b.num_tokens());
            b.dp_decode_only = b.is_decode();
        }
        return b;
    };

#ifdef K2_HAVE_CUDA_MODEL
    auto* cuda_model = dynamic_cast<DeepseekV3CudaModel*>(model.get());
    if (cuda_model != nullptr) {
        cuda_model->set_layer_profiling(o.profile_layers);  // eager steps only: graph replays have no events
    }
#endif
    std::vector<double> prefill_s;
    std::vector<std::vector<float>> prefill_layer_ms;
    for (int r = 0; r < o.prefill_runs + 1; ++r) {  // the first run warms up
        const ForwardBatch b = padded(prefill_batch(prefill_seq, o.prefill_tokens, rng, vocab));
        const auto t0 = Clock::now();
        model->forward(b);
        if (r > 0) {
            prefill_s.push_back(seconds_since(t0));
#ifdef K2_HAVE_CUDA_MODEL
            if (cuda_model != nullptr && o.profile_layers) {
                prefill_layer_ms.push_back(cuda_model->last_layer_times_ms());
            }
#endif
        }
    }
    // Each decode sequence's context, written by real prefills (chunks of at most max_num_tokens).
    const auto fill_start = Clock::now();
    for (Seq& q : seqs) {
        const ForwardBatch b = padded(prefill_batch(q, o.context, rng, vocab));
        model->forward(b);
        q.length = o.context;
    }
    const double fill_s = seconds_since(fill_start);
    std::vector<double> step_s;
    std::vector<std::vector<float>> layer_ms;
    std::vector<std::vector<float>> comm_ms;
    std::vector<std::vector<float>> ep_ms;
    for (int i = 0; i < o.warmup + o.decode_steps; ++i) {
        const ForwardBatch b = padded(decode_batch(seqs, rng, vocab));
        const auto t0 = Clock::now();
        model->forward(b);  // returns after the logits reached the host
        if (i >= o.warmup) {
            step_s.push_back(seconds_since(t0));
        }
#ifdef K2_HAVE_CUDA_MODEL
        if (cuda_model != nullptr && o.profile_layers && i >= o.warmup) {
            layer_ms.push_back(cuda_model->last_layer_times_ms());
            comm_ms.push_back(cuda_model->last_comm_times_ms());
            ep_ms.push_back(cuda_model->last_ep_exchange_times_ms());
        }
#endif
    }
    int active = 0;
#ifdef K2_HAVE_CUDA_MODEL
    if (cuda_model != nullptr) {
        active = cuda_model->last_moe_active_experts();
    }
#endif
    if (reporter) {
        report(o, c, load_s, copy_rate, prefill_s, fill_s, step_s, {layer_ms, prefill_layer_ms, comm_ms, ep_ms},
               active);
    }
}

// One process per rank, forked before anything touches CUDA (a CUDA context does not survive fork); rank r
// drives GPU r. The ranks meet over Gloo on a free local port (NCCL bootstraps over that).
void run_bench_step(const StepOptions& o) {
    dist::ParallelConfig config;
    config.tensor_parallel_size = o.tensor_parallel_size;
    config.data_parallel_size = o.data_parallel_size;
    config.decode_context_parallel_size = o.decode_context_parallel_size;
    config.enable_expert_parallel = o.enable_expert_parallel;
    config.validate();
    if (config.is_single()) {
        run_rank(o, nullptr);
        return;
    }
    K2_CHECK(o.device == "cuda",
             "k2 bench step: -tp/-dp/-dcp/--enable-expert-parallel time the CUDA model (--device cuda)");
    dist::GlooOptions base;
    base.master_addr = "127.0.0.1";
    base.master_port = free_port_pair(base.master_addr);
    base.timeout = std::chrono::minutes(10);  // rank 0 also measures the copy rate and fills long contexts
    const int world = config.world_size();
    std::vector<pid_t> children;
    for (int rank = 1; rank < world; ++rank) {
        std::fflush(nullptr);
        const pid_t pid = fork();
        K2_CHECK(pid >= 0, "k2 bench step: fork() failed for rank {}", rank);
        if (pid == 0) {
            int code = 0;
            try {
                run_rank(o, dist::make_gloo_groups(config, rank, base));
            } catch (const std::exception& e) {
                std::fprintf(stderr, "k2 bench step: rank %d: %s\n", rank, e.what());
                code = 1;
            }
            std::fflush(nullptr);
            _exit(code);
        }
        children.push_back(pid);
    }
    std::string failed;
    try {
        run_rank(o, dist::make_gloo_groups(config, 0, base));
    } catch (const std::exception& e) {
        failed = fmt::format("rank 0: {}", e.what());
        for (const pid_t pid : children) {
            kill(pid, SIGTERM);  // the others would wait in a collective until the timeout
        }
    }
    for (size_t i = 0; i < children.size(); ++i) {
        int status = 0;
        waitpid(children[i], &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            failed += fmt::format("{}rank {} failed", failed.empty() ? "" : "; ", i + 1);
        }
    }
    K2_CHECK(failed.empty(), "k2 bench step: {}", failed);
}

}  // namespace

void add_bench_step_command(CLI::App& bench) {
    CLI::App* cmd = bench.add_subcommand("step", "Time one model's prefill and decode steps against the HBM floor");
    auto o = std::make_shared<StepOptions>();
    cmd->add_option("model", o->model, "Model directory or hub id")->required();
    cmd->add_option("--device", o->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
    cmd->add_option("--kv-cache-dtype", o->kv_cache_dtype, "auto, bfloat16 or fp8")
        ->check(CLI::IsMember({"auto", "bfloat16", "fp8"}))
        ->capture_default_str();
    cmd->add_option("--layers", o->layers, "Time only the first L layers (0: all)")->capture_default_str();
    cmd->add_option("--batch", o->batch, "Decode batch (sequences)")->capture_default_str();
    cmd->add_option("--context", o->context, "Cached tokens per decode sequence")->capture_default_str();
    cmd->add_option("--decode-steps", o->decode_steps, "Timed decode steps")->capture_default_str();
    cmd->add_option("--warmup", o->warmup, "Untimed decode steps first")->capture_default_str();
    cmd->add_option("--prefill-tokens", o->prefill_tokens, "Tokens of the timed prefill")->capture_default_str();
    cmd->add_option("--prefill-runs", o->prefill_runs, "Timed prefill runs")->capture_default_str();
    cmd->add_flag("--enforce-eager", o->enforce_eager, "No CUDA graphs");
    cmd->add_flag("--profile-layers", o->profile_layers, "Per-layer decode times (needs --enforce-eager)");
    cmd->add_option("--output-json", o->output_json, "Write the result here too");
    cmd->add_option("--tensor-parallel-size", o->tensor_parallel_size,
                    "TP size (-tp): ranks (processes, one GPU each); rank 0 reports")
        ->capture_default_str();
    cmd->add_option("--data-parallel-size", o->data_parallel_size,
                    "DP size (-dp): replicas of tp ranks each, running the same batches (world = dp x tp)")
        ->capture_default_str();
    cmd->add_option("--decode-context-parallel-size", o->decode_context_parallel_size,
                    "DCP size (-dcp): the latent cache split by token over this many TP ranks")
        ->capture_default_str();
    cmd->add_flag("--enable-expert-parallel", o->enable_expert_parallel,
                  "Routed experts held whole, spread over the TP ranks (and the DP replicas)");
    cmd->callback([o] { run_bench_step(*o); });
}

}  // namespace k2::cli

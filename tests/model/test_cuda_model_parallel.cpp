// Tensor parallelism of the CUDA model runner (issues 9 and 10): TP = 2 ranks, each a separate process holding half
// the heads, intermediate dimensions and vocabulary, reproduce the single-rank CUDA model's logits; likewise with
// expert parallelism over the TP group, with decode context parallelism (TP 2 x DCP 2), and with two DP replicas
// sharing their experts (DP 2 x TP 1 and 2 with expert parallelism). The ranks share
// GPU 0 and sum their sublayer outputs through host memory over Gloo (K2_TP_COMM=host), so the sharded forward is
// checked on a one-GPU machine; on several GPUs the same code runs over NCCL, one GPU per rank.
//
// The models are small random Kimi-K2-format checkpoints written at test time whose every TP slice falls on the
// 128x128 FP8 blocks (as Kimi-K2's do): two layers, dense only, or one dense and one MoE layer (8 experts, top 2, a
// shared expert). The two runs differ by the bf16 rounding of partial sums (each rank's sublayer output is rounded
// before the all-reduce). Measured on the H200 (2026-11-29): median row cosine 0.9988 with the MoE layer, where one
// row of 120 fell to 0.757: the noise flipped a routing near-tie between two of the 8 experts (random weights route
// on small margins; see test_cuda_model.cpp). So the dense model must match on every row (>= 0.995, median >=
// 0.999) and the MoE model statistically (median >= 0.998, >= 95% of rows >= 0.995, at most 2% below 0.9, the
// same argmax on >= 80% of the rows whose single-rank top-2 margin exceeds 0.5). A missing all-reduce or a wrong
// slice gives cosines near 0 on every row.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <span>

#include "backend/cuda/device_buffer.h"
#include "core/error.h"
#include "dist/gloo_communicator.h"
#include "dist/multiprocess.h"
#include "io/model_config.h"
#include "io/synth.h"
#include "model/sequence_batch.h"
#include "model/weight_schema.h"

namespace k2::test {
namespace {

constexpr const char* kMoeConfig = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "kimi_k2", "vocab_size": 4096, "hidden_size": 512,
  "intermediate_size": 1024, "moe_intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 8,
  "num_key_value_heads": 8, "n_shared_experts": 1, "n_routed_experts": 8, "routed_scaling_factor": 2.827,
  "kv_lora_rank": 128, "q_lora_rank": 256, "qk_rope_head_dim": 32, "v_head_dim": 128, "qk_nope_head_dim": 96,
  "topk_method": "noaux_tc", "n_group": 1, "topk_group": 1, "num_experts_per_tok": 2, "moe_layer_freq": 1,
  "first_k_dense_replace": 1, "norm_topk_prob": true, "scoring_func": "sigmoid", "hidden_act": "silu",
  "max_position_embeddings": 4096, "rms_norm_eps": 1e-06, "bos_token_id": 3840, "eos_token_id": 3841,
  "tie_word_embeddings": false, "rope_theta": 50000.0, "rope_scaling": null, "attention_bias": false,
  "torch_dtype": "bfloat16",
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128]}
})";

constexpr int kPromptLen = 40;
constexpr int kNumPrompts = 3;

// Runs fn in a forked child (which alone touches CUDA: a parent with a CUDA context cannot fork CUDA users);
// returns its exit status, or -1 when it crashed.
int in_child(const std::function<int()>& fn) {
    std::fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
        int code = 1;
        try {
            code = fn();
        } catch (const std::exception& e) {
            std::fprintf(stderr, "child failed: %s\n", e.what());
        }
        std::fflush(stderr);
        _exit(code);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::vector<int32_t> prompt(int p) {
    std::vector<int32_t> ids(kPromptLen);
    for (int i = 0; i < kPromptLen; ++i) {
        ids[static_cast<size_t>(i)] = (p * 977 + i * 131 + 7) % 3800;
    }
    return ids;
}

// Chunked runs: a 100-token sequence (two KV blocks) as a 70-token prefill, then 30 one-token decode steps.
constexpr int kChunkedLen = 100;
constexpr int kChunkedPrefill = 70;

// Every prompt's logits for all its tokens, rows appended: [kNumPrompts * tokens, vocab]. Unchunked: one prefill
// of kPromptLen tokens; chunked: see kChunkedLen (decode steps attend to what earlier steps cached).
std::vector<float> all_logits(Model& model, bool chunked = false) {
    std::vector<float> out;
    const auto append = [&](SingleSequence& seq, std::span<const int32_t> ids) {
        const Tensor logits = seq.append(ids, true);  // [ids, vocab]
        out.insert(out.end(), logits.data_as<float>(), logits.data_as<float>() + logits.numel());
    };
    for (int p = 0; p < kNumPrompts; ++p) {
        if (!chunked) {
            SingleSequence seq(model, kPromptLen);
            append(seq, prompt(p));
            continue;
        }
        std::vector<int32_t> ids = prompt(p);
        const std::vector<int32_t> more = prompt(p + kNumPrompts);
        ids.insert(ids.end(), more.begin(), more.end());
        ids.insert(ids.end(), more.begin(), more.begin() + (kChunkedLen - 2 * kPromptLen));
        SingleSequence seq(model, kChunkedLen);
        append(seq, std::span(ids).first(kChunkedPrefill));
        for (int i = kChunkedPrefill; i < kChunkedLen; ++i) {
            append(seq, std::span(ids).subspan(static_cast<size_t>(i), 1));
        }
    }
    return out;
}

std::unique_ptr<Model> load(const std::filesystem::path& dir, std::shared_ptr<dist::ParallelGroups> groups) {
    ModelOptions options;
    options.device = "cuda";
    options.max_num_tokens = 256;
    options.max_model_len = 256;
    options.parallel = std::move(groups);
    return load_model(dir, options);
}

void write_model(const std::filesystem::path& dir, const nlohmann::json& json) {
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "config.json") << json.dump(2);
    const ModelConfig config = parse_model_config(json.dump(), "test config");
    write_synth_weights(plan_synth(config, expected_tensors(config)), dir, 7);
}

class CudaTensorParallel : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        s_gpus = in_child([] { return std::min(cuda::cuda_device_count(), 100); });
        if (s_gpus <= 0) {
            return;
        }
        s_root = std::filesystem::temp_directory_path() / fmt::format("k2-tp-synth-{}", getpid());
        s_dir = s_root / "moe";
        nlohmann::json json = nlohmann::json::parse(kMoeConfig);
        write_model(s_dir, json);
        json["first_k_dense_replace"] = json["num_hidden_layers"];
        write_model(s_root / "dense", json);
    }
    static void TearDownTestSuite() {
        if (!s_root.empty()) {
            std::filesystem::remove_all(s_root);
        }
    }
    void SetUp() override {
        if (s_gpus <= 0) {
            GTEST_SKIP() << "no CUDA device: the tensor-parallel CUDA model runs on the GPU machine";
        }
    }

    static int s_gpus;
    static std::filesystem::path s_root;
    static std::filesystem::path s_dir;  // the MoE model
};

int CudaTensorParallel::s_gpus = 0;
std::filesystem::path CudaTensorParallel::s_root;
std::filesystem::path CudaTensorParallel::s_dir;

double cosine(const float* a, const float* b, int64_t n) {
    double ab = 0.0, aa = 0.0, bb = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        if (!std::isfinite(a[i]))
            return -2.0;
        ab += static_cast<double>(a[i]) * b[i];
        aa += static_cast<double>(a[i]) * a[i];
        bb += static_cast<double>(b[i]) * b[i];
    }
    return ab / std::sqrt(aa * bb + 1e-300);
}

struct Agreement {
    std::vector<double> cos;  // sorted
    int confident = 0;        // rows whose single-rank top-2 margin exceeds 0.5
    int agree = 0;            // of those, rows with the same argmax
    double median() const { return cos[cos.size() / 2]; }
    double fraction_at_least(double c) const {
        return static_cast<double>(cos.end() - std::lower_bound(cos.begin(), cos.end(), c)) /
               static_cast<double>(cos.size());
    }
};

std::vector<float> read_floats(const std::filesystem::path& f) {
    std::vector<float> v(std::filesystem::file_size(f) / 4);
    std::ifstream(f, std::ios::binary)
        .read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * 4));
    return v;
}

void write_floats(const std::filesystem::path& f, const std::vector<float>& v) {
    std::ofstream(f, std::ios::binary)
        .write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * 4));
}

constexpr int64_t kVocab = 4096;

// Row-by-row agreement of `got` with the single-rank `ref` (both [rows, kVocab]), appended to `a` (unsorted).
void add_rows(Agreement& a, const std::vector<float>& ref, const std::vector<float>& got) {
    for (size_t r = 0; r < ref.size() / kVocab; ++r) {
        const float* t = got.data() + r * kVocab;
        const float* b = ref.data() + r * kVocab;
        a.cos.push_back(cosine(t, b, kVocab));
        std::vector<float> top(b, b + kVocab);
        std::partial_sort(top.begin(), top.begin() + 2, top.end(), std::greater<float>());
        if (top[0] - top[1] > 0.5f) {
            ++a.confident;
            a.agree += std::max_element(t, t + kVocab) - t == std::max_element(b, b + kVocab) - b ? 1 : 0;
        }
    }
}

// How the two ranks split the model: TP = 2 over `comm` (host or nccl), optionally with expert parallelism over
// the TP group or decode context parallelism.
struct Split {
    const char* comm = "host";
    int tp = 2;
    bool expert_parallel = false;
    int dcp = 1;
    bool chunked = false;  // all_logits' chunked runs (prefill + decode steps) instead of one prefill
};

// The model in `dir` on one rank and on split.tp ranks (rank r on GPU r % device count, so all on GPU 0 of a one-GPU
// machine) split as `split`; row-by-row agreement of their logits.
Agreement compare_tp(const std::filesystem::path& dir, const Split& split = {}) {
    const std::filesystem::path ref_file = dir / "single.f32";
    const std::filesystem::path tp_file = dir / "tp.f32";
    K2_CHECK(in_child([&] {
                 write_floats(ref_file, all_logits(*load(dir, nullptr), split.chunked));
                 return 0;
             }) == 0,
             "the single-rank run failed");
    setenv("K2_TP_COMM", split.comm, 1);
    const std::string failures = dist::testing::run_ranks(
        split.tp,
        [&](int rank, int port) {
            dist::ParallelConfig config;
            config.tensor_parallel_size = split.tp;
            config.enable_expert_parallel = split.expert_parallel;
            config.decode_context_parallel_size = split.dcp;
            dist::GlooOptions base;
            base.master_port = port;
            base.timeout = std::chrono::milliseconds(120000);
            const std::vector<float> logits =
                all_logits(*load(dir, dist::make_gloo_groups(config, rank, base)), split.chunked);
            if (rank == 0) {
                write_floats(tp_file, logits);
            }
        },
        std::chrono::seconds(300));
    unsetenv("K2_TP_COMM");
    K2_CHECK(failures.empty(), "tp={} ranks failed: {}", split.tp, failures);
    const std::vector<float> ref = read_floats(ref_file);
    const std::vector<float> tp = read_floats(tp_file);
    const int rows_per_prompt = split.chunked ? kChunkedLen : kPromptLen;
    K2_CHECK(ref.size() == static_cast<size_t>(kNumPrompts * rows_per_prompt * kVocab) && tp.size() == ref.size(),
             "logits sizes {} and {}", ref.size(), tp.size());
    Agreement a;
    add_rows(a, ref, tp);
    std::sort(a.cos.begin(), a.cos.end());
    std::printf(
        "%s tp%d%s%s%s (%s) vs tp1: %zu rows, median cosine %.6f, min %.6f, >= 0.995: %.3f, argmax agree "
        "%d/%d\n",
        dir.filename().c_str(), split.tp, split.expert_parallel ? " ep" : "", split.dcp > 1 ? " dcp" : "",
        split.chunked ? ", chunked" : "", split.comm, a.cos.size(), a.median(), a.cos.front(),
        a.fraction_at_least(0.995), a.agree, a.confident);
    return a;
}

TEST_F(CudaTensorParallel, DenseModelMatchesOnEveryRow) {
    const Agreement a = compare_tp(s_root / "dense");
    EXPECT_GE(a.median(), 0.999);
    EXPECT_GE(a.cos.front(), 0.995);
    EXPECT_EQ(a.agree, a.confident);
}

// The production path: NCCL between two GPUs (a multi-GPU machine only; NCCL refuses two ranks on one GPU).
TEST_F(CudaTensorParallel, NcclAcrossTwoGpus) {
    if (s_gpus < 2) {
        GTEST_SKIP() << s_gpus << " CUDA device(s): the NCCL tensor-parallel test needs 2 GPUs";
    }
    const Agreement a = compare_tp(s_root / "dense", {.comm = "nccl"});
    EXPECT_GE(a.median(), 0.999);
    EXPECT_GE(a.cos.front(), 0.995);
}

// The default on one host: the one-shot peer-memory all-reduce for small messages (decode steps), NCCL for the rest.
TEST_F(CudaTensorParallel, PeerMemoryAllReduceAcrossTwoGpus) {
    if (s_gpus < 2) {
        GTEST_SKIP() << s_gpus << " CUDA device(s): the peer-memory all-reduce needs 2 GPUs";
    }
    const Agreement a = compare_tp(s_root / "dense", {.comm = "p2p", .chunked = true});
    EXPECT_GE(a.median(), 0.999);
    EXPECT_GE(a.cos.front(), 0.995);
    EXPECT_EQ(a.agree, a.confident);
}

// Expert parallelism over the TP group (vLLM's EP with dp = 1): each rank holds 4 of the 8 experts whole and the
// shared expert's half; the ranks' partial MoE outputs meet in the TP all-reduce. Same statistics as TP (the bf16
// rounding of partial sums moves routing near-ties); a rank that dropped or double-counted the other's experts
// gives cosines far below these bounds.
void expect_moe_agreement(const Agreement& a) {
    EXPECT_GE(a.median(), 0.998);
    EXPECT_GE(a.fraction_at_least(0.995), 0.95);
    EXPECT_LE(1.0 - a.fraction_at_least(0.9), 0.02);
    EXPECT_GE(a.agree, a.confident * 4 / 5);
}

TEST_F(CudaTensorParallel, MoeModelMatchesStatistically) {
    expect_moe_agreement(compare_tp(s_dir));
}

TEST_F(CudaTensorParallel, ExpertParallelMatchesStatistically) {
    expect_moe_agreement(compare_tp(s_dir, {.expert_parallel = true}));
}

TEST_F(CudaTensorParallel, ExpertParallelNcclAcrossTwoGpus) {
    if (s_gpus < 2) {
        GTEST_SKIP() << s_gpus << " CUDA device(s): the NCCL expert-parallel test needs 2 GPUs";
    }
    expect_moe_agreement(compare_tp(s_dir, {.comm = "nccl", .expert_parallel = true}));
}

// Decode context parallelism over the TP group (TP 2 x DCP 2): each rank stores every other token of the latent
// cache and the partial attentions are merged by log-sum-exp. Chunked runs (a 70-token prefill, then 30 decode
// steps over two KV blocks), so cached context on both ranks is attended. The dense model: every row must match as
// TP alone does; a token stored on the wrong rank, a wrong local slot or a wrong merge weight breaks whole rows.
TEST_F(CudaTensorParallel, DecodeContextParallelMatchesOnEveryRow) {
    const Agreement a = compare_tp(s_root / "dense", {.dcp = 2, .chunked = true});
    EXPECT_GE(a.median(), 0.999);
    EXPECT_GE(a.cos.front(), 0.995);
    EXPECT_EQ(a.agree, a.confident);
}

TEST_F(CudaTensorParallel, DecodeContextParallelNcclAcrossTwoGpus) {
    if (s_gpus < 2) {
        GTEST_SKIP() << s_gpus << " CUDA device(s): the NCCL decode-context-parallel test needs 2 GPUs";
    }
    const Agreement a = compare_tp(s_root / "dense", {.comm = "nccl", .dcp = 2, .chunked = true});
    EXPECT_GE(a.median(), 0.999);
    EXPECT_GE(a.cos.front(), 0.995);
}

// Four GPUs (a 4-GPU machine only): the dense model over TP 4 (2 heads, a quarter of the MLP and vocabulary per
// rank) with the default all-reduce, and TP 4 x DCP 4 (16 of every 64 cached tokens per rank).
TEST_F(CudaTensorParallel, FourGpus) {
    if (s_gpus < 4) {
        GTEST_SKIP() << s_gpus << " CUDA device(s): the 4-rank tests need 4 GPUs";
    }
    for (const Split& split :
         {Split{.comm = "auto", .tp = 4, .chunked = true}, Split{.comm = "nccl", .tp = 4, .dcp = 4, .chunked = true}}) {
        const Agreement a = compare_tp(s_root / "dense", split);
        EXPECT_GE(a.median(), 0.999);
        EXPECT_GE(a.cos.front(), 0.995);
        EXPECT_EQ(a.agree, a.confident);
    }
}

// Data parallelism with expert parallelism over every (dp, tp) rank (vLLM's -dp N --enable-expert-parallel): the
// replicas run different sequences in lockstep world steps, and the MoE layers route every replica's tokens through
// experts spread over all ranks (all-gather / reduce-scatter padded to the step's largest replica). Replica d runs
// one sequence: a prefill of kDpPrefill[d] tokens, then one-token decode steps; a replica with no work in a step
// joins it as a dummy (empty batch, padded size only). Each replica's logits must match the single-rank run of its
// own sequence with the MoE statistics above; a token routed to the wrong replica, a dropped or doubled expert
// partial, or a dummy that skipped an exchange (a hang, caught by the timeout) fails it.
constexpr int kDpSteps = 9;
constexpr int kDpPrefill[2] = {40, 23};

// Replica d's new tokens at step s (empty: a dummy step). Replica 0 decodes at steps 1-6 and idles at 7-8; replica 1
// decodes at steps 1-3, idles at 4-6 and decodes again at 7-8.
std::vector<int32_t> dp_step_tokens(int d, int s) {
    const std::vector<int32_t> ids = prompt(d + 4);
    if (s == 0) {
        return std::vector<int32_t>(ids.begin(), ids.begin() + kDpPrefill[d]);
    }
    const bool busy = d == 0 ? s <= 6 : s <= 3 || s >= 7;
    return busy ? std::vector<int32_t>{(d * 31 + s * 577 + 5) % 3800} : std::vector<int32_t>{};
}

// Replica d's logits over the script ([rows, vocab], rows appended), with each step's replica token counts when
// dp_padded.
std::vector<float> run_dp_script(Model& model, int d, bool dp_padded) {
    const std::vector<int32_t> blocks = {0, 1};
    model.allocate_kv_cache(2);
    std::vector<float> out;
    int cached = 0;
    for (int s = 0; s < kDpSteps; ++s) {
        const std::vector<int32_t> tokens = dp_step_tokens(d, s);
        ForwardBatch b;
        if (!tokens.empty()) {
            const SequenceChunk chunk{tokens, cached, blocks, true};
            b = build_forward_batch({&chunk, 1});
            cached += static_cast<int>(tokens.size());
        } else if (!dp_padded) {
            continue;  // the single-rank reference has no dummy steps
        }
        if (dp_padded) {
            b.dp_num_tokens = {static_cast<int32_t>(dp_step_tokens(0, s).size()),
                               static_cast<int32_t>(dp_step_tokens(1, s).size())};
            b.dp_decode_only = s > 0;  // as the executor sets it: steps 1-8 decode (or idle) on both replicas
        }
        const Tensor logits = model.forward(b);  // [rows, vocab]
        out.insert(out.end(), logits.data_as<float>(), logits.data_as<float>() + logits.numel());
    }
    return out;
}

Agreement compare_dp(const std::filesystem::path& dir, const char* comm, int tp) {
    constexpr int kDp = 2;
    K2_CHECK(in_child([&] {
                 std::unique_ptr<Model> model = load(dir, nullptr);
                 for (int d = 0; d < kDp; ++d) {
                     write_floats(dir / fmt::format("dp_ref{}.f32", d), run_dp_script(*model, d, false));
                 }
                 return 0;
             }) == 0,
             "the single-rank run failed");
    setenv("K2_TP_COMM", comm, 1);
    const std::string failures = dist::testing::run_ranks(
        kDp * tp,
        [&](int rank, int port) {
            dist::ParallelConfig config;
            config.tensor_parallel_size = tp;
            config.data_parallel_size = kDp;
            config.enable_expert_parallel = true;
            dist::GlooOptions base;
            base.master_port = port;
            base.timeout = std::chrono::milliseconds(120000);
            std::shared_ptr<dist::ParallelGroups> groups = dist::make_gloo_groups(config, rank, base);
            const int d = groups->coord.dp;
            const bool leader = groups->is_dp_leader();
            const std::vector<float> logits = run_dp_script(*load(dir, std::move(groups)), d, true);
            if (leader) {
                write_floats(dir / fmt::format("dp_got{}.f32", d), logits);
            }
        },
        std::chrono::seconds(300));
    unsetenv("K2_TP_COMM");
    K2_CHECK(failures.empty(), "dp={} tp={} ranks failed: {}", kDp, tp, failures);
    Agreement a;
    for (int d = 0; d < kDp; ++d) {
        const std::vector<float> ref = read_floats(dir / fmt::format("dp_ref{}.f32", d));
        const std::vector<float> got = read_floats(dir / fmt::format("dp_got{}.f32", d));
        const size_t rows = static_cast<size_t>(kDpPrefill[d]) + (d == 0 ? 6 : 5);
        K2_CHECK(ref.size() == rows * kVocab && got.size() == ref.size(), "replica {}: logits sizes {} and {}", d,
                 ref.size(), got.size());
        add_rows(a, ref, got);
    }
    std::sort(a.cos.begin(), a.cos.end());
    std::printf(
        "%s dp%d tp%d ep (%s) vs tp1: %zu rows, median cosine %.6f, min %.6f, >= 0.995: %.3f, argmax agree "
        "%d/%d\n",
        dir.filename().c_str(), kDp, tp, comm, a.cos.size(), a.median(), a.cos.front(), a.fraction_at_least(0.995),
        a.agree, a.confident);
    return a;
}

// Host-staged exchanges: every rank on GPU 0 of a one-GPU machine.
TEST_F(CudaTensorParallel, DataExpertParallelMatchesStatistically) {
    expect_moe_agreement(compare_dp(s_dir, "host", 1));
    expect_moe_agreement(compare_dp(s_dir, "host", 2));  // DP 2 x TP 2: each TP rank sends half its replica's tokens
}

TEST_F(CudaTensorParallel, DataExpertParallelNcclAcrossGpus) {
    if (s_gpus < 2) {
        GTEST_SKIP() << s_gpus << " CUDA device(s): the NCCL data + expert parallel test needs 2 GPUs";
    }
    expect_moe_agreement(compare_dp(s_dir, "nccl", 1));
    if (s_gpus >= 4) {
        expect_moe_agreement(compare_dp(s_dir, "auto", 2));  // TP all-reduce on peer memory, exchange on NCCL
    }
}

// A split that does not fall on the FP8 blocks is refused with the field named (before any weight is read).
TEST_F(CudaTensorParallel, MisalignedSplitIsRefused) {
    const std::string failures = dist::testing::run_ranks(4, [&](int rank, int port) {
        dist::ParallelConfig config;
        config.tensor_parallel_size = 4;  // moe_intermediate_size 256 / 4 = 64: not a multiple of 128
        dist::GlooOptions base;
        base.master_port = port;
        setenv("K2_TP_COMM", "host", 1);
        try {
            load(s_dir, dist::make_gloo_groups(config, rank, base));
        } catch (const Error& e) {
            const std::string what = e.what();
            K2_CHECK(what.find("intermediate_size") != std::string::npos && what.find("128") != std::string::npos,
                     "unexpected message: {}", what);
            return;
        }
        K2_FAIL("tp=4 with 64-wide expert slices was accepted");
    });
    EXPECT_EQ(failures, "");
}

}  // namespace
}  // namespace k2::test

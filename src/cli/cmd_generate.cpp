// `k2 generate [MODEL] --token-ids ... | --prompt TEXT | --chat TEXT [sampling flags]`: offline generation
// with a plain loop over Model (one sequence on blocks 0, 1, 2, ...; prefill, then one token per step).
// Prints the generated ids as one JSON array line, then the text when the model has a tokenizer.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <random>
#include <string>

#include "cli/commands.h"
#include "cli/demo_model.h"
#include "core/error.h"
#include "core/log.h"
#include "io/model_path.h"
#include "model/model.h"
#include "model/sequence_batch.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace k2::cli {

namespace {

struct GenerateOptions {
    std::string model;
    std::string token_ids;
    std::string prompt;
    std::string chat;
    int max_tokens = 16;
    double temperature = 1.0;
    double top_p = 1.0;
    int top_k = -1;
    uint64_t seed = 0;
    bool ignore_eos = false;
    bool timing = false;
    std::string kv_cache_dtype = "auto";
    std::string device = "cpu";
};

KvCacheDType parse_kv_dtype(const std::string& s) {
    if (s == "auto" || s == "float32" || s == "fp32")
        return KvCacheDType::F32;
    if (s == "bfloat16" || s == "bf16")
        return KvCacheDType::BF16;
    if (s == "fp8" || s == "fp8_e4m3")
        return KvCacheDType::FP8_E4M3;
    K2_FAIL("--kv-cache-dtype: \"{}\" is not one of auto, float32, bfloat16, fp8", s);
}

// Greedy at temperature 0; otherwise softmax(logits / T) restricted to the top_k best, then to the smallest
// set whose probability reaches top_p.
int32_t sample_token(std::span<const float> logits, const GenerateOptions& o, std::mt19937_64& rng) {
    if (o.temperature <= 0.0) {
        return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    }
    std::vector<int32_t> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
    size_t keep = order.size();
    if (o.top_k > 0)
        keep = std::min(keep, static_cast<size_t>(o.top_k));
    std::vector<double> probs(keep);
    const double top = logits[order[0]];
    double sum = 0.0;
    for (size_t i = 0; i < keep; ++i)
        sum += probs[i] = std::exp((logits[order[i]] - top) / o.temperature);
    double cum = 0.0;
    for (size_t i = 0; i < keep; ++i) {
        cum += probs[i] / sum;
        if (cum >= o.top_p) {
            keep = i + 1;
            break;
        }
    }
    std::discrete_distribution<size_t> dist(probs.begin(), probs.begin() + static_cast<std::ptrdiff_t>(keep));
    return order[dist(rng)];
}

std::vector<int32_t> prompt_ids(const GenerateOptions& o, const Tokenizer* tok) {
    const int given = int{!o.token_ids.empty()} + int{!o.prompt.empty()} + int{!o.chat.empty()};
    K2_CHECK(given == 1, "give exactly one of --token-ids, --prompt, --chat");
    if (!o.token_ids.empty()) {
        return parse_token_ids(o.token_ids, "--token-ids");
    }
    K2_CHECK(tok != nullptr, "--prompt/--chat need the model's tokenizer (tiktoken.model)");
    if (!o.prompt.empty()) {
        return tok->encode(o.prompt);
    }
    const nlohmann::json request = {{"messages", {{{"role", "user"}, {"content", o.chat}}}},
                                    {"add_generation_prompt", true}};
    return tok->encode(tok->apply_chat_template(request));
}

void run_generate(const GenerateOptions& o) {
    const std::filesystem::path dir = o.model.empty() ? demo_model_dir() : resolve_model_path(o.model);
    K2_CHECK(o.max_tokens >= 1, "--max-tokens must be at least 1");
    K2_CHECK(o.top_p > 0.0 && o.top_p <= 1.0, "--top-p must be in (0, 1]");
    std::shared_ptr<const Tokenizer> tok;
    try {
        tok = Tokenizer::load(dir);
    } catch (const Error& e) {
        K2_CHECK(o.token_ids.size() > 0, "{}", e.message());
        K2_WARN("no tokenizer, printing ids only: {}", e.message());
    }
    const std::vector<int32_t> prompt = prompt_ids(o, tok.get());
    K2_CHECK(!prompt.empty(), "the prompt is empty");
    ModelOptions options;
    options.kv_cache_dtype = parse_kv_dtype(o.kv_cache_dtype);
    options.device = o.device;
    std::unique_ptr<Model> model = load_model(dir, options);
    std::vector<int64_t> stops = model->config().eos_token_ids;
    if (tok) {
        for (const int32_t id : tok->stop_token_ids())
            stops.push_back(id);
    }

    SingleSequence seq(*model, static_cast<int>(prompt.size()) + o.max_tokens);
    std::mt19937_64 rng(o.seed);
    std::vector<int32_t> out;
    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    Tensor logits = seq.append(prompt, false);  // [1, vocab]
    const auto t1 = Clock::now();
    for (int step = 0; step < o.max_tokens; ++step) {
        const auto row = logits.span<const float>();
        K2_CHECK(std::all_of(row.begin(), row.end(), [](float v) { return std::isfinite(v); }),
                 "non-finite logits after {} generated tokens", out.size());
        const int32_t next = sample_token(row, o, rng);
        out.push_back(next);
        if ((!o.ignore_eos && std::find(stops.begin(), stops.end(), next) != stops.end()) || step + 1 == o.max_tokens) {
            break;
        }
        logits = seq.append({&next, 1}, false);
    }
    const auto t2 = Clock::now();
    std::printf("%s\n", nlohmann::json(out).dump().c_str());
    if (tok) {
        // Through the incremental detokenizer: invalid UTF-8 (likely from a random model) becomes U+FFFD.
        IncrementalDetokenizer detok(*tok, /*skip_special_tokens=*/true);
        std::string text;
        for (const int32_t id : out)
            text += detok.push(id);
        text += detok.flush();
        std::printf("%s\n", text.c_str());
    }
    if (o.timing) {
        const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
        const double decode_s = std::chrono::duration<double>(t2 - t1).count();
        const auto decode_steps = static_cast<double>(out.size() - 1);
        std::fprintf(stderr, "prefill: %zu tokens in %.4f s = %.1f tokens/s\n", prompt.size(), prefill_s,
                     static_cast<double>(prompt.size()) / prefill_s);
        std::fprintf(stderr, "decode: %.0f tokens in %.4f s = %.1f tokens/s\n", decode_steps, decode_s,
                     decode_steps > 0 ? decode_steps / decode_s : 0.0);
    }
}

}  // namespace

void add_generate_command(CLI::App& app) {
    auto o = std::make_shared<GenerateOptions>();
    CLI::App* cmd = app.add_subcommand("generate", "Offline generation with a simple loop (no scheduler)");
    cmd->add_option("model", o->model, "Model directory or hub id (default: the demo model models/kimi-k2-demo)");
    cmd->add_option("--token-ids", o->token_ids, "Prompt as comma-separated token ids");
    cmd->add_option("--prompt", o->prompt, "Prompt text (encoded as is)");
    cmd->add_option("--chat", o->chat, "A user message, rendered with the chat template");
    cmd->add_option("--max-tokens", o->max_tokens, "Tokens to generate")->capture_default_str();
    cmd->add_option("--temperature", o->temperature, "0 = greedy")->capture_default_str();
    cmd->add_option("--top-p", o->top_p, "Nucleus sampling mass")->capture_default_str();
    cmd->add_option("--top-k", o->top_k, "Keep the k most likely tokens (-1: all)")->capture_default_str();
    cmd->add_option("--seed", o->seed, "Sampling seed")->capture_default_str();
    cmd->add_flag("--ignore-eos", o->ignore_eos, "Do not stop at EOS / <|im_end|>");
    cmd->add_option("--kv-cache-dtype", o->kv_cache_dtype, "auto (float32 on cpu, bfloat16 on cuda), bfloat16 or fp8")
        ->capture_default_str();
    cmd->add_option("--device", o->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
    cmd->add_flag("--timing", o->timing, "Print prefill and decode tokens/s to stderr");
    cmd->callback([o] { run_generate(*o); });
}

}  // namespace k2::cli

// `k2 logits MODEL --token-ids 1,2,3 --output FILE`: raw float32 logits [n_tokens, vocab] of one
// full-sequence forward (all rows), for golden comparisons and debugging.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "io/model_path.h"
#include "model/model.h"
#include "model/sequence_batch.h"

namespace k2::cli {

namespace {

struct LogitsOptions {
    std::string model;
    std::string token_ids;
    std::string output;
    std::string device = "cpu";
    std::string kv_cache_dtype = "auto";
};

void run_logits(const LogitsOptions& o) {
    const std::vector<int32_t> ids = parse_token_ids(o.token_ids, "--token-ids");
    K2_CHECK(!ids.empty(), "--token-ids: at least one token id is required");
    ModelOptions options;
    options.device = o.device;
    options.kv_cache_dtype = o.kv_cache_dtype == "fp8" ? KvCacheDType::FP8_E4M3
                             : o.kv_cache_dtype == "bfloat16" ? KvCacheDType::BF16
                                                              : KvCacheDType::F32;  // auto: f32 (cpu), bf16 (cuda)
    std::unique_ptr<Model> model = load_model(resolve_model_path(o.model), options);
    SingleSequence seq(*model, static_cast<int>(ids.size()));
    const Tensor logits = seq.append(ids, /*all_logits=*/true);  // [n_tokens, vocab]
    std::ofstream out(o.output, std::ios::binary);
    K2_CHECK(out.good(), "--output: cannot open {} for writing", o.output);
    out.write(static_cast<const char*>(logits.data()), static_cast<std::streamsize>(logits.nbytes()));
    K2_CHECK(out.good(), "--output: writing {} failed", o.output);
    const auto values = logits.span<const float>();
    for (size_t i = 0; i < values.size(); ++i) {
        K2_CHECK(std::isfinite(values[i]), "non-finite logit {} at row {}, column {}", values[i],
                 i / static_cast<size_t>(logits.dim(1)), i % static_cast<size_t>(logits.dim(1)));
    }
    std::fprintf(stderr, "wrote %s: float32 [%lld, %lld]\n", o.output.c_str(), static_cast<long long>(logits.dim(0)),
                 static_cast<long long>(logits.dim(1)));
}

}  // namespace

std::vector<int32_t> parse_token_ids(const std::string& text, const std::string& flag) {
    std::vector<int32_t> ids;
    size_t begin = 0;
    while (begin <= text.size() && !text.empty()) {
        const size_t end = std::min(text.find(',', begin), text.size());
        const std::string item = text.substr(begin, end - begin);
        size_t used = 0;
        long long value = -1;
        try {
            value = std::stoll(item, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        K2_CHECK(used == item.size() && !item.empty() && value >= 0 && value <= INT32_MAX,
                 "{}: \"{}\" is not a token id (expected comma-separated non-negative integers)", flag, item);
        ids.push_back(static_cast<int32_t>(value));
        begin = end + 1;
    }
    return ids;
}

void add_logits_command(CLI::App& app) {
    auto opts = std::make_shared<LogitsOptions>();
    CLI::App* cmd =
        app.add_subcommand("logits", "Write raw float32 logits [n_tokens, vocab] of a full-sequence forward");
    cmd->add_option("model", opts->model, "Model directory or hub id")->required();
    cmd->add_option("--token-ids", opts->token_ids, "Comma-separated prompt token ids")->required();
    cmd->add_option("--output,-o", opts->output, "Output file (raw little-endian float32)")->required();
    cmd->add_option("--device", opts->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
    cmd->add_option("--kv-cache-dtype", opts->kv_cache_dtype, "auto, bfloat16 or fp8")
        ->check(CLI::IsMember({"auto", "bfloat16", "fp8"}))
        ->capture_default_str();
    cmd->callback([opts] { run_logits(*opts); });
}

}  // namespace k2::cli

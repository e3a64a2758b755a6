#include "io/synth.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "core/error.h"
#include "core/log.h"

namespace k2 {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

constexpr size_t kChunkBytes = size_t{4} << 20;  // the only buffer the writer holds

// splitmix64: fast, tiny, and good enough for weights nobody trains.
class Rng {
public:
    explicit Rng(uint64_t seed) : m_state(seed) {}
    uint64_t next() {
        uint64_t z = (m_state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    float uniform() { return static_cast<float>(next() >> 40) * (1.0f / 16777216.0f); }  // [0, 1)

private:
    uint64_t m_state;
};

uint64_t tensor_seed(uint64_t seed, const std::string& name) {
    uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a of the name, so values do not depend on the shard plan
    for (const char c : name) {
        h = (h ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
    }
    Rng mix(seed ^ h);
    return mix.next();
}

// 65536 standard-normal samples (Box-Muller, fixed seed, re-standardized): a 16-bit random index
// then gives a normal value with one table load.
const std::array<float, 65536>& normal_table() {
    static const std::array<float, 65536> table = [] {
        std::array<float, 65536> t{};
        Rng rng(0x5eed);
        for (size_t i = 0; i < t.size(); i += 2) {
            const double u1 = (static_cast<double>(rng.next() >> 11) + 1.0) / 9007199254740993.0;
            const double u2 = static_cast<double>(rng.next() >> 11) / 9007199254740992.0;
            const double r = std::sqrt(-2.0 * std::log(u1));
            t[i] = static_cast<float>(r * std::cos(2.0 * M_PI * u2));
            t[i + 1] = static_cast<float>(r * std::sin(2.0 * M_PI * u2));
        }
        double sum = 0.0, sq = 0.0;
        for (const float v : t) {
            sum += v;
            sq += static_cast<double>(v) * v;
        }
        const double mean = sum / t.size();
        const double stdev = std::sqrt(sq / t.size() - mean * mean);
        for (float& v : t) {
            v = static_cast<float>((v - mean) / stdev);
        }
        return t;
    }();
    return table;
}

// e4m3 codes of N(0, kSynthFp8Sigma); float_to_fp8_e4m3 saturates at +-448 (0x7e / 0xfe), so the
// NaN codes 0x7f / 0xff never occur.
const std::array<uint8_t, 65536>& fp8_table() {
    static const std::array<uint8_t, 65536> table = [] {
        std::array<uint8_t, 65536> t{};
        const auto& normal = normal_table();
        for (size_t i = 0; i < t.size(); ++i) {
            t[i] = float_to_fp8_e4m3(kSynthFp8Sigma * normal[i]);
        }
        return t;
    }();
    return table;
}

void store(DType dtype, float value, uint8_t* out) {
    if (dtype == DType::BF16) {
        const uint16_t bits = float_to_bf16(value);
        std::memcpy(out, &bits, 2);
    } else {
        std::memcpy(out, &value, 4);
    }
}

// Fills `count` elements of `t` into `out`; all fills are i.i.d., so chunk boundaries do not matter.
void fill_chunk(const SynthTensor& t, Rng& rng, uint8_t* out, size_t count) {
    const size_t esize = dtype_size(t.dtype);
    switch (t.fill) {
        case SynthFill::Fp8Normal: {
            const auto& codes = fp8_table();
            size_t i = 0;
            for (; i + 4 <= count; i += 4) {
                const uint64_t r = rng.next();
                out[i] = codes[r & 0xffff];
                out[i + 1] = codes[(r >> 16) & 0xffff];
                out[i + 2] = codes[(r >> 32) & 0xffff];
                out[i + 3] = codes[r >> 48];
            }
            for (; i < count; ++i) {
                out[i] = codes[rng.next() & 0xffff];
            }
            return;
        }
        case SynthFill::Scale:
            for (size_t i = 0; i < count; ++i) {
                store(t.dtype, t.std / kSynthFp8Sigma * (0.5f + rng.uniform()), out + i * esize);
            }
            return;
        case SynthFill::Normal: {
            const auto& normal = normal_table();
            for (size_t i = 0; i < count; ++i) {
                store(t.dtype, t.std * normal[rng.next() & 0xffff], out + i * esize);
            }
            return;
        }
        case SynthFill::Ones:
            for (size_t i = 0; i < count; ++i) {
                store(t.dtype, 1.0f, out + i * esize);
            }
            return;
    }
}

std::string shard_header(const SynthShard& shard) {
    json header = json::object();
    header["__metadata__"] = {{"format", "pt"}};
    uint64_t offset = 0;
    for (const SynthTensor& t : shard.tensors) {
        const uint64_t end = offset + t.nbytes();
        header[t.name] = {
            {"dtype", std::string(dtype_name(t.dtype))}, {"shape", t.shape}, {"data_offsets", {offset, end}}};
        offset = end;
    }
    std::string text = header.dump();
    // The reference writer pads with spaces so the data area starts 8-byte aligned.
    text.append((8 - text.size() % 8) % 8, ' ');
    return text;
}

void write_shard(const SynthShard& shard, const fs::path& path, uint64_t seed) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    K2_CHECK(out.good(), "{}: cannot create: {}", path.string(), std::strerror(errno));
    const std::string header = shard_header(shard);
    const uint64_t header_bytes = header.size();
    out.write(reinterpret_cast<const char*>(&header_bytes), 8);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    std::vector<uint8_t> buffer(kChunkBytes);
    for (const SynthTensor& t : shard.tensors) {
        Rng rng(tensor_seed(seed, t.name));
        const size_t esize = dtype_size(t.dtype);
        uint64_t remaining = t.nbytes();
        while (remaining > 0) {
            const size_t bytes = static_cast<size_t>(std::min<uint64_t>(remaining, kChunkBytes));
            fill_chunk(t, rng, buffer.data(), bytes / esize);
            out.write(reinterpret_cast<const char*>(buffer.data()), static_cast<std::streamsize>(bytes));
            remaining -= bytes;
        }
        K2_CHECK(out.good(), "{}: write failed at tensor '{}': {}", path.string(), t.name, std::strerror(errno));
    }
    out.close();
    K2_CHECK(!out.fail(), "{}: write failed: {}", path.string(), std::strerror(errno));
}

void write_text(const fs::path& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    K2_CHECK(!out.fail(), "{}: cannot write: {}", path.string(), std::strerror(errno));
}

std::vector<SynthTensor> synth_tensors_of(const ExpectedTensor& e, const ModelConfig& config) {
    const bool is_matrix = e.shape.size() == 2;
    const float fan_in_std = is_matrix ? 1.0f / std::sqrt(static_cast<float>(std::max<int64_t>(e.shape[1], 1))) : 0.0f;
    if (e.has_scale) {
        return {{e.name, DType::F8_E4M3, e.shape, SynthFill::Fp8Normal, fan_in_std},
                {scale_name(e.name), DType::F32, scale_shape(e.shape, config), SynthFill::Scale, fan_in_std}};
    }
    if (e.name.ends_with("e_score_correction_bias")) {
        return {{e.name, e.dtype, e.shape, SynthFill::Normal, 0.01f}};  // small: only biases the selection
    }
    if (!is_matrix) {
        return {{e.name, e.dtype, e.shape, SynthFill::Ones, 1.0f}};  // RMSNorm weights
    }
    // Unit-variance embeddings; projections (lm_head, router, unquantized linears) keep unit output variance.
    const float std = e.name == "model.embed_tokens.weight" ? 1.0f : fan_in_std;
    return {{e.name, e.dtype, e.shape, SynthFill::Normal, std}};
}

struct SpecialToken {
    int offset;
    const char* content;
    bool special;
};
// Kimi-K2's added_tokens_decoder (reference/kimi_k2.md §5.4), as offsets from the first special id.
constexpr std::array<SpecialToken, 17> kSpecialTokens{{
    {0, "[BOS]", true},
    {1, "[EOS]", true},
    {2, "<|im_end|>", true},
    {3, "<|im_user|>", true},
    {4, "<|im_assistant|>", true},
    {6, "<|start_header_id|>", true},
    {7, "<|end_header_id|>", true},
    {9, "[EOT]", true},
    {10, "<|im_system|>", true},
    {11, "<|tool_calls_section_begin|>", false},
    {12, "<|tool_calls_section_end|>", false},
    {13, "<|tool_call_begin|>", false},
    {14, "<|tool_call_argument_begin|>", false},
    {15, "<|tool_call_end|>", false},
    {17, "<|im_middle|>", true},
    {254, "[UNK]", true},
    {255, "[PAD]", true},
}};
constexpr int kNumReservedSpecial = 256;

json tokenizer_config(const ModelConfig& config, int64_t base) {
    json added = json::object();
    for (const SpecialToken& t : kSpecialTokens) {
        added[std::to_string(base + t.offset)] = {{"content", t.content}, {"lstrip", false},
                                                  {"normalized", false},  {"rstrip", false},
                                                  {"single_word", false}, {"special", t.special}};
    }
    return {{"added_tokens_decoder", added},
            {"additional_special_tokens",
             {"<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|start_header_id|>", "<|end_header_id|>", "[EOT]",
              "<|im_system|>", "<|im_middle|>"}},
            {"auto_map", {{"AutoTokenizer", {"tokenization_kimi.TikTokenTokenizer", nullptr}}}},
            {"bos_token", "[BOS]"},
            {"clean_up_tokenization_spaces", false},
            {"eos_token", "[EOS]"},
            {"model_max_length", config.max_position_embeddings},
            {"pad_token", "[PAD]"},
            {"tokenizer_class", "TikTokenTokenizer"},
            {"unk_token", "[UNK]"}};
}

// The first `count` ranks of a tiktoken file, streamed line by line; checks the ranks are 0..count-1.
void copy_tiktoken_prefix(const fs::path& source, const fs::path& dest, int64_t count) {
    std::ifstream in(source);
    K2_CHECK(in.good(), "{}: cannot read the tiktoken source", source.string());
    std::ofstream out(dest, std::ios::binary | std::ios::trunc);
    std::string line;
    int64_t rank = 0;
    while (rank < count && std::getline(in, line)) {
        if (line.empty()) {
            continue;
        }
        const size_t space = line.rfind(' ');
        K2_CHECK(space != std::string::npos && line.substr(space + 1) == std::to_string(rank),
                 "{}: line for rank {} is not 'BASE64 {}'", source.string(), rank, rank);
        out << line << '\n';
        ++rank;
    }
    K2_CHECK(rank == count, "{}: has {} ranks, the model needs {} (vocab_size - 256)", source.string(), rank, count);
    out.close();
    K2_CHECK(!out.fail(), "{}: cannot write", dest.string());
}

}  // namespace

uint64_t SynthTensor::nbytes() const {
    return static_cast<uint64_t>(shape_numel(shape)) * dtype_size(dtype);
}

json kimi_k2_preset_config(std::optional<int> num_layers, std::optional<int> num_experts) {
    json c = {
        {"architectures", {"DeepseekV3ForCausalLM"}},
        {"attention_bias", false},
        {"attention_dropout", 0.0},
        {"auto_map",
         {{"AutoConfig", "configuration_deepseek.DeepseekV3Config"},
          {"AutoModel", "modeling_deepseek.DeepseekV3Model"},
          {"AutoModelForCausalLM", "modeling_deepseek.DeepseekV3ForCausalLM"}}},
        {"aux_loss_alpha", 0.001},
        {"bos_token_id", 163584},
        {"eos_token_id", 163585},
        {"first_k_dense_replace", 1},
        {"hidden_act", "silu"},
        {"hidden_size", 7168},
        {"initializer_range", 0.02},
        {"intermediate_size", 18432},
        {"kv_lora_rank", 512},
        {"max_position_embeddings", 131072},
        {"model_type", "kimi_k2"},
        {"moe_intermediate_size", 2048},
        {"moe_layer_freq", 1},
        {"n_group", 1},
        {"n_routed_experts", 384},
        {"n_shared_experts", 1},
        {"norm_topk_prob", true},
        {"num_attention_heads", 64},
        {"num_experts_per_tok", 8},
        {"num_hidden_layers", 61},
        {"num_key_value_heads", 64},
        {"num_nextn_predict_layers", 0},
        {"pretraining_tp", 1},
        {"q_lora_rank", 1536},
        {"qk_nope_head_dim", 128},
        {"qk_rope_head_dim", 64},
        {"quantization_config",
         {{"activation_scheme", "dynamic"},
          {"fmt", "e4m3"},
          {"quant_method", "fp8"},
          {"weight_block_size", {128, 128}}}},
        {"rms_norm_eps", 1e-06},
        {"rope_scaling",
         {{"beta_fast", 1.0},
          {"beta_slow", 1.0},
          {"factor", 32.0},
          {"mscale", 1.0},
          {"mscale_all_dim", 1.0},
          {"original_max_position_embeddings", 4096},
          {"type", "yarn"}}},
        {"rope_theta", 50000.0},
        {"routed_scaling_factor", 2.827},
        {"scoring_func", "sigmoid"},
        {"seq_aux", true},
        {"tie_word_embeddings", false},
        {"topk_group", 1},
        {"topk_method", "noaux_tc"},
        {"torch_dtype", "bfloat16"},
        {"transformers_version", "4.48.3"},
        {"use_cache", true},
        {"v_head_dim", 128},
        {"vocab_size", 163840},
    };
    if (num_layers.has_value()) {
        K2_CHECK(*num_layers >= 1, "--layers must be >= 1 (got {})", *num_layers);
        c["num_hidden_layers"] = *num_layers;
    }
    if (num_experts.has_value()) {
        K2_CHECK(*num_experts >= 1, "--experts must be >= 1 (got {})", *num_experts);
        c["n_routed_experts"] = *num_experts;
        c["num_experts_per_tok"] = std::min(8, *num_experts);
    }
    return c;
}

SynthPlan plan_synth(const ModelConfig& config, const std::vector<ExpectedTensor>& expected, uint64_t max_shard_bytes) {
    SynthPlan plan;
    std::vector<SynthShard> shards(1);
    for (const ExpectedTensor& e : expected) {
        std::vector<SynthTensor> unit = synth_tensors_of(e, config);
        uint64_t unit_bytes = 0;
        for (const SynthTensor& t : unit) {
            unit_bytes += t.nbytes();
        }
        if (!shards.back().tensors.empty() && shards.back().bytes + unit_bytes > max_shard_bytes) {
            shards.emplace_back();
        }
        for (SynthTensor& t : unit) {
            shards.back().tensors.push_back(std::move(t));
            ++plan.num_tensors;
        }
        shards.back().bytes += unit_bytes;
        plan.total_bytes += unit_bytes;
    }
    for (size_t i = 0; i < shards.size(); ++i) {
        shards[i].file = fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
    }
    plan.shards = std::move(shards);
    return plan;
}

void write_synth_weights(const SynthPlan& plan, const fs::path& out_dir, uint64_t seed) {
    fs::create_directories(out_dir);
    json weight_map = json::object();
    for (const SynthShard& shard : plan.shards) {
        K2_INFO("synth: writing {} ({} tensors, {:.2f} GB)", shard.file, shard.tensors.size(), shard.bytes / 1e9);
        write_shard(shard, out_dir / shard.file, seed);
        for (const SynthTensor& t : shard.tensors) {
            weight_map[t.name] = shard.file;
        }
    }
    const json index = {{"metadata", {{"total_size", plan.total_bytes}}}, {"weight_map", weight_map}};
    write_text(out_dir / "model.safetensors.index.json", index.dump(2) + "\n");
}

SynthTokenizerSources default_tokenizer_sources() {
    const char* env = std::getenv("K2_SOURCE_DIR");
#ifdef K2_SOURCE_DIR
    const fs::path root = env != nullptr ? fs::path(env) : fs::path(K2_SOURCE_DIR);
#else
    const fs::path root = env != nullptr ? fs::path(env) : fs::path(".");
#endif
    return {root / "tests/fixtures/tokenizer/kimi-o200k/tiktoken.model",
            root / "tests/fixtures/chat_templates/kimi-k2-instruct-0905.jinja"};
}

void write_synth_model_files(const json& config_json, const ModelConfig& config, const fs::path& out_dir,
                             const SynthTokenizerSources& sources) {
    K2_CHECK(config.vocab_size > kNumReservedSpecial, "config: vocab_size {} leaves no room for {} special tokens",
             config.vocab_size, kNumReservedSpecial);
    const int64_t base = config.vocab_size - kNumReservedSpecial;
    fs::create_directories(out_dir);
    write_text(out_dir / "config.json", config_json.dump(2) + "\n");
    // K2-Instruct's generation_config stops on <|im_end|> (base + 2), config.json says [EOS] (base + 1).
    const json generation = {
        {"bos_token_id", base}, {"eos_token_id", base + 2}, {"max_length", config.max_position_embeddings}};
    write_text(out_dir / "generation_config.json", generation.dump(2) + "\n");
    write_text(out_dir / "tokenizer_config.json", tokenizer_config(config, base).dump(2) + "\n");
    copy_tiktoken_prefix(sources.tiktoken, out_dir / "tiktoken.model", base);
    if (!sources.chat_template.empty() && fs::exists(sources.chat_template)) {
        fs::copy_file(sources.chat_template, out_dir / "chat_template.jinja", fs::copy_options::overwrite_existing);
    }
}

}  // namespace k2

#include "server/scripted_model.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace k2::server {

using json = nlohmann::ordered_json;

std::vector<ScriptEntry> load_script(const std::filesystem::path& file, const Tokenizer& tokenizer) {
    std::ifstream in(file);
    K2_CHECK(in.good(), "--test-scripted-output: cannot open {}", file.string());
    std::stringstream text;
    text << in.rdbuf();
    const json doc = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
    K2_CHECK(!doc.is_discarded(), "--test-scripted-output: {} is not valid JSON", file.string());
    const json& list = doc.is_object() && doc.contains("outputs") ? doc["outputs"] : doc;
    K2_CHECK(list.is_array(), "--test-scripted-output: {} must hold a list of outputs", file.string());
    std::vector<ScriptEntry> entries;
    for (const json& item : list) {
        K2_CHECK(item.is_object(), "--test-scripted-output: {}: every output must be an object", file.string());
        ScriptEntry entry;
        entry.prompt_contains = item.value("prompt_contains", "");
        entry.echo = item.value("echo", false);
        entry.delay_ms = item.value("delay_ms", 0);
        if (item.contains("text")) {
            entry.output = tokenizer.encode(item["text"].get<std::string>(), /*allow_special=*/true);
        } else if (item.contains("token_ids")) {
            entry.output = item["token_ids"].get<std::vector<int32_t>>();
        } else {
            K2_CHECK(entry.echo, "--test-scripted-output: {}: an output needs \"text\", \"token_ids\" or \"echo\"",
                     file.string());
        }
        entries.push_back(std::move(entry));
    }
    return entries;
}

ScriptedModel::ScriptedModel(ModelConfig config, std::shared_ptr<const Tokenizer> tokenizer,
                             std::vector<ScriptEntry> entries)
    : m_config(std::move(config)), m_tokenizer(std::move(tokenizer)), m_entries(std::move(entries)) {
    if (!m_config.eos_token_ids.empty()) {
        m_eos = static_cast<int32_t>(m_config.eos_token_ids.front());
    } else {
        const std::vector<int32_t> stops = m_tokenizer->stop_token_ids();
        K2_CHECK(!stops.empty(), "scripted model: the model has no EOS token");
        m_eos = stops.front();
    }
}

size_t ScriptedModel::kv_cache_bytes_per_block() const {
    // What a float32 latent cache of this config would take, so the engine sizes the pool as for a real model.
    const size_t per_token = static_cast<size_t>(m_config.kv_lora_rank + m_config.qk_rope_head_dim) * 4 *
                             static_cast<size_t>(std::max(1, m_config.num_hidden_layers));
    return std::max<size_t>(per_token, 64) * kKvBlockSize;
}

void ScriptedModel::allocate_kv_cache(int num_blocks) {
    const size_t num_slots = static_cast<size_t>(num_blocks) * kKvBlockSize;
    m_slot_tokens.assign(num_slots, -1);
    m_slot_generated.assign(num_slots, 0);
    m_slot_sampled_at.assign(num_slots, 0);
}

int32_t ScriptedModel::next_token(const std::vector<int32_t>& context, size_t num_generated, int& delay_ms) const {
    const size_t num_prompt = context.size() - num_generated;
    const std::vector<int32_t> prompt(context.begin(), context.begin() + static_cast<std::ptrdiff_t>(num_prompt));
    const std::string prompt_text = m_tokenizer->decode(prompt, /*skip_special_tokens=*/false);
    for (const ScriptEntry& entry : m_entries) {
        if (prompt_text.find(entry.prompt_contains) == std::string::npos)
            continue;
        const std::vector<int32_t>& output = entry.echo ? prompt : entry.output;
        delay_ms = std::max(delay_ms, entry.delay_ms);
        return num_generated < output.size() ? output[num_generated] : m_eos;
    }
    return m_eos;
}

Tensor ScriptedModel::forward(const ForwardBatch& batch) {
    const int num_seqs = batch.num_seqs();
    auto slot_of = [&](int seq_idx, int32_t position) -> int64_t {
        const int32_t block =
            batch.block_tables[static_cast<size_t>(seq_idx) * batch.max_blocks_per_seq + position / kKvBlockSize];
        return static_cast<int64_t>(block) * kKvBlockSize + position % kKvBlockSize;
    };
    // Write every new token into its slot; it was generated iff logits were produced at the position before.
    for (int s = 0; s < num_seqs; ++s) {
        for (int32_t t = batch.query_start[s]; t < batch.query_start[s + 1]; ++t) {
            const int64_t slot = batch.slot_mapping[t];
            const int32_t position = batch.positions[t];
            m_slot_generated[slot] = position > 0 ? m_slot_sampled_at[slot_of(s, position - 1)] : 0;
            m_slot_tokens[slot] = batch.token_ids[t];
            m_slot_sampled_at[slot] = 0;
        }
    }
    const auto num_logits = static_cast<int64_t>(batch.logits_indices.size());
    int delay_ms = 0;
    Tensor logits = Tensor::zeros(DType::F32, {num_logits, m_config.vocab_size});  // [num_logits, vocab_size]
    for (int64_t row = 0; row < num_logits; ++row) {
        const int32_t t = batch.logits_indices[row];
        int s = 0;
        while (s + 1 < num_seqs && batch.query_start[s + 1] <= t)
            ++s;
        const int32_t position = batch.positions[t];
        std::vector<int32_t> context(static_cast<size_t>(position) + 1);
        size_t num_generated = 0;
        for (int32_t p = 0; p <= position; ++p)
            context[p] = m_slot_tokens[slot_of(s, p)];
        for (int32_t p = position; p >= 0 && m_slot_generated[slot_of(s, p)]; --p)
            ++num_generated;
        m_slot_sampled_at[batch.slot_mapping[t]] = 1;
        const int32_t token = next_token(context, num_generated, delay_ms);
        logits.data_as<float>()[row * m_config.vocab_size + token] = 100.0f;
    }
    if (delay_ms > 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    return logits;
}

}  // namespace k2::server

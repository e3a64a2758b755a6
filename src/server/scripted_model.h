// TEST ONLY. A Model whose greedy output is given by a script, for API tests that need exact model output
// (tool calls, stop strings) without a trained model. `k2 serve` enables it only with the hidden flag
// --test-scripted-output FILE *and* the environment variable K2_ENABLE_TEST_MODEL=1.
//
// Script file (JSON): {"outputs": [ENTRY, ...]} or just [ENTRY, ...]; the first entry whose "prompt_contains"
// occurs in the decoded prompt (empty/absent: any prompt) is used:
//   {"prompt_contains": "weather", "text": "I'll check. <|tool_calls_section_begin|>..."}  (special tokens allowed)
//   {"prompt_contains": "...", "token_ids": [1, 2, 3]}
//   {"prompt_contains": "Echo", "echo": true}   (the output repeats the prompt's tokens)
// An entry may add "delay_ms": N so that each step producing its tokens takes N ms (slow streams).
// After the scripted tokens the model emits EOS. Logits are 0 except +100 at the scripted token, so any
// sampling settings give the scripted token.
//
// Like a real model it keeps a "KV cache" (here: the token id at each slot), so it knows each sequence's
// context from the block tables alone; a token counts as generated when logits were produced at the
// position before it.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"

namespace k2 {
class Tokenizer;
}

namespace k2::server {

struct ScriptEntry {
    std::string prompt_contains;
    std::vector<int32_t> output;
    bool echo = false;
    int delay_ms = 0;  // each step that produces this entry's next token takes at least this long
};

std::vector<ScriptEntry> load_script(const std::filesystem::path& file, const Tokenizer& tokenizer);

class ScriptedModel final : public Model {
public:
    ScriptedModel(ModelConfig config, std::shared_ptr<const Tokenizer> tokenizer, std::vector<ScriptEntry> entries);

    const ModelConfig& config() const override { return m_config; }
    size_t kv_cache_bytes_per_block() const override;
    void allocate_kv_cache(int num_blocks) override;
    Tensor forward(const ForwardBatch& batch) override;

private:
    // The scripted token after `context`, of which the last num_generated tokens were generated.
    int32_t next_token(const std::vector<int32_t>& context, size_t num_generated, int& delay_ms) const;

    ModelConfig m_config;
    std::shared_ptr<const Tokenizer> m_tokenizer;
    std::vector<ScriptEntry> m_entries;
    int32_t m_eos = 0;
    std::vector<int32_t> m_slot_tokens;      // [num_blocks * kKvBlockSize]
    std::vector<uint8_t> m_slot_generated;   // [num_blocks * kKvBlockSize] token was sampled, not prompt
    std::vector<uint8_t> m_slot_sampled_at;  // [num_blocks * kKvBlockSize] logits were produced here
};

}  // namespace k2::server

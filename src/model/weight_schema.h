// The tensors a DeepSeek-V3 / Kimi-K2 checkpoint must hold for a given config.json
// (reference/kimi_k2.md §2.2), and the check of a checkpoint against that list.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/model_config.h"
#include "io/safetensors.h"

namespace k2 {

struct ExpectedTensor {
    std::string name;
    std::vector<int64_t> shape;  // [out, in] for projections
    DType dtype;                 // F8_E4M3 for quantized projections; BF16 for norms/embeddings/router; F32 bias
    bool has_scale;              // an F32 `<name>_scale_inv` of shape scale_shape() must accompany it
};

// Every tensor the model needs, in checkpoint order (embeddings, layers, final norm, lm_head).
// Scales are not listed separately: see ExpectedTensor::has_scale.
std::vector<ExpectedTensor> expected_tensors(const ModelConfig& config);

// "x.weight" -> "x.weight_scale_inv".
std::string scale_name(const std::string& weight_name);
// [ceil(out / block_n), ceil(in / block_k)] of a block-quantized [out, in] weight.
std::vector<int64_t> scale_shape(const std::vector<int64_t>& weight_shape, const ModelConfig& config);

// Names the checker skips: stale rotary buffers and layers >= num_hidden_layers (MTP).
bool is_ignored_tensor(const std::string& name, const ModelConfig& config);

// Everything wrong with a checkpoint, one line per problem, each naming the file and the tensor.
struct CheckpointReport {
    std::vector<std::string> errors;
    std::vector<std::string> unexpected;  // names of extra tensors (warnings)
    size_t num_expected = 0;              // expected tensors incl. scales
    size_t num_ignored = 0;               // skipped by is_ignored_tensor
};
// Never throws for a broken checkpoint: every shard, header and tensor problem becomes an error line.
CheckpointReport check_checkpoint(const Checkpoint& checkpoint, const ModelConfig& config,
                                  const std::string& config_label = "config.json");

// Throws k2::Error (one line naming file and tensor) for missing tensors, wrong shapes/dtypes, an FP8 weight
// without its weight_scale_inv (or a scale of the wrong shape); ignores *.rotary_emb.inv_freq and layers
// >= num_hidden_layers (MTP). Returns the names of unexpected extra tensors (reported as warnings).
std::vector<std::string> validate_checkpoint(const Checkpoint& checkpoint, const ModelConfig& config);

}  // namespace k2

// The non-absorbed MLA prefill path of the CUDA model runner (cuda/mla_prefill.h): which steps take it, their
// per-sequence arrays, and the attention sublayer's launches. Decode steps and short chunks keep the absorbed
// kernels (mla_ops.h / mla_decode.h): the kv_b expansion costs ~2 * ctx * lat * heads * 256 FLOP per step, which
// a prefill chunk of >= ~30 tokens repays (measured 8k causal: 6.7 ms against 37 ms absorbed, docs/perf/kernels.md).
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/bf16_gemm.h"
#include "backend/cuda/mla_ops.h"
#include "io/model_config.h"
#include "model/forward_batch.h"

namespace k2::cuda_model {

struct Workspace;
struct StepBatch;
struct DeviceLayer;

// nope 128, rope 64, v 128 (Kimi-K2, DeepSeek-V3): the shapes the flash kernel is built for.
bool mla_prefill_supported(const ModelConfig& config);

// Context tokens the workspace holds for the path (0 when the shapes are not supported): 2 x max_tokens.
int64_t mla_prefill_ctx_capacity(const ModelConfig& config, int64_t max_tokens);

// Sets d.mla_prefill and, when set, fills and uploads d's cu_seqlens / ctx_slots. The path is taken when the
// shapes are supported, the step has >= K2_MLA_PREFILL_MIN_TOKENS new tokens (default 128; K2_DISABLE_MLA_PREFILL
// turns it off), every sequence's new tokens sit at the end of its context, and the whole context fits ctx_capacity.
void prepare_mla_prefill(const ForwardBatch& batch, const ModelConfig& config, int64_t ctx_capacity, StepBatch& d,
                         cudaStream_t stream);

// ws.o [T, heads * 128] = the attention of the step's queries (ws.q, the q_b output; its q_pe is roped in place)
// over the latent cache, which already holds the step's tokens.
void run_mla_prefill_attention(cuda::Bf16GemmRunner& gemm, Workspace& ws, const StepBatch& b, const DeviceLayer& w,
                               const ModelConfig& config, const cuda::LatentCacheRef& cache, const float* inv_freq,
                               float rope_scale, float softmax_scale, cudaStream_t stream);

}  // namespace k2::cuda_model

// Model: the seam between the engine and a model implementation. The engine owns scheduling and
// block ids; the model owns weights and the paged latent KV cache storage those ids index.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "dist/parallel.h"
#include "io/model_config.h"
#include "model/forward_batch.h"

namespace k2 {

inline constexpr int kKvBlockSize = 64;  // tokens per KV block (FlashMLA's page size)

enum class KvCacheDType : uint8_t { F32, BF16, FP8_E4M3 };

struct ModelOptions {
    std::string device = "cpu";  // "cpu" or "cuda"
    KvCacheDType kv_cache_dtype = KvCacheDType::F32;
    int num_threads = 0;  // CPU backend: 0 = OpenMP default
    // CUDA backend: activation buffers are sized for this many tokens per step (--max-num-batched-tokens).
    int max_num_tokens = 8192;
    // CUDA backend: decode steps replay CUDA graphs captured per padded batch size unless enforce_eager; graphs
    // cover sequences up to max_model_len tokens (0: the config's max_position_embeddings).
    bool enforce_eager = false;
    int max_model_len = 0;
    int max_num_seqs = 256;
    // This rank's share of a parallel job (dist/parallel.h); null: a single-rank job. Every rank of the job
    // loads its shard, calls allocate_kv_cache with the same count and forward for every step (a rank with no
    // work passes an empty batch so the collectives still meet); the DP leader (TP rank 0 of stage 0) gets the
    // replica's full logits, other ranks an empty [0, vocab] tensor.
    std::shared_ptr<dist::ParallelGroups> parallel;
};

class Model {
public:
    virtual ~Model() = default;

    virtual const ModelConfig& config() const = 0;

    // Bytes of latent KV cache one block takes over all layers (for sizing the pool).
    virtual size_t kv_cache_bytes_per_block() const = 0;
    // (Re)allocates the cache with num_blocks blocks of kKvBlockSize tokens; contents are undefined.
    virtual void allocate_kv_cache(int num_blocks) = 0;
    // Bytes the KV cache may take so that the process uses at most this fraction of the device's memory
    // (--gpu-memory-utilization), measured after weights and activations are allocated (>= 1); 0 for models
    // without device memory (CPU, scripted), whose budget is --kv-cache-memory-bytes.
    virtual size_t kv_cache_budget_bytes(double gpu_memory_utilization) const {
        (void)gpu_memory_utilization;
        return 0;
    }

    // Runs one step. Writes every new token's latent KV at batch.slot_mapping, attends over each
    // sequence's blocks (batch.block_tables) up to batch.seq_lens, and returns float32 logits
    // [num_logits, vocab_size] on the host for the rows in batch.logits_indices.
    // Thread-compatible: one caller at a time.
    virtual Tensor forward(const ForwardBatch& batch) = 0;

    // forward() split in two for --async-scheduling: submit enqueues the step and returns at once (the engine
    // schedules the next step meanwhile), collect waits for it and returns its logits. Calls alternate: submit,
    // collect, submit, ... The default runs forward() inside submit, so models without device queues work
    // unchanged; the CUDA model enqueues the step and the logits download on its stream. `batch` is read during
    // submit only (a caller may change it afterwards).
    virtual void submit(const ForwardBatch& batch) { m_pending_logits = forward(batch); }
    virtual Tensor collect() { return std::move(m_pending_logits); }

    // Sampling on the model's device (vLLM samples on the GPU too): when true, the engine may fill
    // ForwardBatch::device_sampling, and after forward() / collect() sampled_tokens() holds the token of every row
    // not marked Host ([num_logits], -1 for Host rows); those rows' logits are then unspecified (never downloaded).
    virtual bool samples_on_device() const { return false; }
    virtual const std::vector<int32_t>& sampled_tokens() const { return m_no_tokens; }

private:
    Tensor m_pending_logits;
    std::vector<int32_t> m_no_tokens;  // [num_logits, vocab_size] of the default submit, until collect
};

// Loads a checkpoint directory (config.json + safetensors) for the device in `options`.
std::unique_ptr<Model> load_model(const std::filesystem::path& model_dir, const ModelOptions& options);

}  // namespace k2

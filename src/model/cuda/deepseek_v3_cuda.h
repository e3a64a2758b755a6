// DeepSeek-V3 / Kimi-K2 on one GPU: FP8 weights as stored (1x128 activations x 128x128 weight blocks), BF16
// activations and residual stream, the absorbed MLA over a paged latent cache (BF16 or FP8), the MoE as
// permute -> grouped FP8 expert GEMMs -> weighted combine. The CPU model (model/deepseek_v3.h) is the oracle:
// same weights loader, same math, fp32 there and bf16/fp8 activations here.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "backend/cuda/bf16_gemm.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/fp8_gemm.h"
#include "backend/cuda/mla_ops.h"
#include "io/safetensors.h"
#include "model/cuda/dcp_attention.h"
#include "model/cuda/device_sampler.h"
#include "model/cuda/moe_lanes.h"
#include "model/cuda/side_stream.h"
#include "model/cuda/tp_comm.h"
#include "model/deepseek_v3.h"
#include "model/model.h"

namespace k2 {

namespace cuda_model {

// An FP8 projection on the device: weight [n, k] e4m3, scale [ceil(n / 128), k / 128] f32 multipliers.
struct DeviceLinear {
    cuda::DeviceBuffer weight;
    cuda::DeviceBuffer scale;
    int64_t n = 0;
    int64_t k = 0;
};

// The routed experts this rank holds, stacked: gate_up [E, 2 * inter, hidden] (gate rows first), down [E, hidden,
// inter]. Without expert parallelism all of them (E = n_routed_experts); with it the global ids
// [first_expert, first_expert + E), each whole.
struct DeviceExperts {
    DeviceLinear gate_up;  // n = 2 * inter per expert
    DeviceLinear down;     // n = hidden per expert
    int num_experts = 0;
    int first_expert = 0;
};

struct DeviceLayer {
    cuda::DeviceBuffer input_norm;  // [hidden] bf16
    cuda::DeviceBuffer post_norm;   // [hidden] bf16
    DeviceLinear q_a;               // [q_lora_rank, hidden]
    cuda::DeviceBuffer q_a_norm;    // [q_lora_rank] bf16
    DeviceLinear q_b;               // [heads * qk_head_dim, q_lora_rank] (or q_proj [.., hidden])
    DeviceLinear kv_a;              // [kv_lora_rank + rope, hidden]
    cuda::DeviceBuffer kv_a_norm;   // [kv_lora_rank] bf16
    cuda::DeviceBuffer w_uk;        // [heads, nope, kv_lora_rank] bf16
    cuda::DeviceBuffer w_uv;        // [heads, v_head_dim, kv_lora_rank] bf16
    DeviceLinear o_proj;            // [hidden, heads * v_head_dim]
    bool is_moe = false;
    DeviceLinear gate_up;            // dense or shared experts: [2 * inter, hidden]
    DeviceLinear down;               // [hidden, inter]
    cuda::DeviceBuffer router;       // [n_routed_experts, hidden] bf16
    cuda::DeviceBuffer router_bias;  // [n_routed_experts] f32
    DeviceExperts experts;
};

struct DeviceWeights {
    cuda::DeviceBuffer embed;  // [vocab, hidden] bf16
    std::vector<DeviceLayer> layers;
    cuda::DeviceBuffer final_norm;  // [hidden] bf16
    cuda::DeviceBuffer lm_head;     // [vocab, hidden] bf16
    size_t num_bytes = 0;
};

// Copies the weights the CPU loader found to the GPU (experts stacked, kv_b split, bf16 where not FP8), logging
// progress with bytes and rate.
DeviceWeights upload_weights(const DeepseekV3Weights& host, const ModelConfig& config);

struct Workspace;  // activations of one step (cuda_workspace.h)
struct StepBatch;  // the step's index arrays on the device (cuda_workspace.h)

}  // namespace cuda_model

class DeepseekV3CudaModel final : public Model {
public:
    DeepseekV3CudaModel(ModelConfig config, Checkpoint checkpoint, const ModelOptions& options);
    ~DeepseekV3CudaModel() override;

    const ModelConfig& config() const override { return m_full_config; }
    size_t kv_cache_bytes_per_block() const override;
    void allocate_kv_cache(int num_blocks) override;
    size_t kv_cache_budget_bytes(double gpu_memory_utilization) const override;
    Tensor forward(const ForwardBatch& batch) override;  // submit + collect
    void submit(const ForwardBatch& batch) override;
    Tensor collect() override;
    // One GPU without TP / DP / EP (their logits travel as slices or to other processes); K2_HOST_SAMPLING=1 turns
    // it off (A/B runs).
    bool samples_on_device() const override;
    const std::vector<int32_t>& sampled_tokens() const override { return m_sampled; }

    // Benchmark probes (k2 bench step). With profiling on, eager steps record an event around every layer.
    void set_layer_profiling(bool on) { m_profile_layers = on; }
    std::vector<float> last_layer_times_ms();  // [num_layers, 2] (attention, feed-forward) of the last eager step
    // [num_layers, 2] (attention's, feed-forward's) tensor-parallel all-reduce of the last eager step, as this rank
    // saw it (waiting for slower ranks included); empty on one rank.
    std::vector<float> last_comm_times_ms();
    int last_moe_active_experts();  // this rank's experts with rows in the last step's last MoE layer
    // [num_moe_layers, 2] (dispatch all-gather, combine reduce-scatter) of the last eager step's data + expert
    // parallel exchanges, as this rank saw them; empty without DP + EP.
    std::vector<float> last_ep_exchange_times_ms();

private:
    // Decode batches are padded up to one of these sizes and replayed from a CUDA graph (vLLM's capture sizes, capped
    // at 64: above it the MoE needs the expert row counts on the host).
    static constexpr int kGraphBatchSizes[] = {1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64};

    void check_batch(const ForwardBatch& batch) const;
    // table_pitch > 0: the block table goes into out's fixed [seqs, table_pitch] table (graph batches).
    void upload_batch(const ForwardBatch& batch, cuda_model::StepBatch& out, int table_pitch = 0);
    void allocate_graph_buffers();
    // Embedding, every layer and the final norm: ws.xb [T, hidden] for the step in `b` (graph-capturable when b
    // is a graph batch).
    void run_layers(const cuda_model::StepBatch& b);
    int graph_size_for(const ForwardBatch& batch) const;  // 0: run eagerly
    void run_graph(const ForwardBatch& batch, int graph_size);
    cuda::LatentCacheRef cache_ref(int layer) const;
    // Sublayers read the quantized normed input from the workspace (xq/xs, and xb for the router) and write y.
    void attention(int layer, int64_t num_tokens, const cuda_model::StepBatch& batch);
    void attend(int layer, int64_t num_tokens, const cuda_model::StepBatch& batch);
    // out [T, hidden] = down(silu(gate) * up) of ws.xq / ws.xs, the activation quantized into act_q / act_s, with
    // `fp8` on `stream` (the main stream and runner, or the side stream's).
    void dense_mlp(const cuda_model::DeviceLinear& gate_up, const cuda_model::DeviceLinear& down, int64_t num_tokens,
                   uint16_t* out, uint8_t* act_q, float* act_s, cuda::Fp8GemmRunner& fp8, cudaStream_t stream);
    bool use_side_stream(int64_t num_tokens) const;  // decode-sized steps with a side stream
    // The latent KV path of attention (kv_a -> norm + rope -> paged cache) on `stream` with `fp8`.
    void store_latents(int layer, int64_t num_tokens, const cuda_model::StepBatch& batch, cuda::Fp8GemmRunner& fp8,
                       cudaStream_t stream);
    void moe(int layer, int64_t num_tokens);
    // Router -> permute -> gather -> grouped expert GEMMs of ws.xb / ws.xq (num_tokens rows): ws.yg and the pair
    // rows / weights the combine reads. ep_slice_rows > 0: the rows are moe_over_dp's gathered slices of that size.
    void routed_experts(int layer, int64_t num_tokens, int64_t ep_slice_rows = 0);
    void moe_over_dp(int layer, int64_t num_tokens);  // DP + EP: the exchange around routed_experts
    void ep_mark(int layer, int which);               // profiling event `which` (0..3) of a MoE layer's exchange
    // DP + EP steps (deepseek_v3_cuda_dp.cpp): the step's graph size and exchange size, the same on every rank.
    void plan_dp_step(const ForwardBatch& batch);
    bool dp_graph_fits(int size) const;
    void dp_idle_step(const ForwardBatch& batch);  // an idle replica's part of the step (graph or exchanges only)
    // After the router on the gathered rows: top-k ids -1 on every rank's padding rows (the permute skips them).
    void drop_padding_rows(int64_t slice_rows);
    void norm_residual(const uint16_t* weight, int64_t num_tokens);
    // logits rows [r0, r0 + n) = lm_head(ws.xb[logits_indices[r0 ..]]) into ws.logits (device), then to `logits`.
    void logits_pass(const cuda_model::StepBatch& b, int64_t r0, int64_t n);
    void download_logits(int64_t r0, int64_t n, Tensor& logits);  // enqueued; collect() waits for it
    void finish_logits(int64_t r0, int64_t n, Tensor& logits);    // device sampling, then download_logits if needed
    Tensor host_logits(int64_t rows);
    // y [m, w.n] bf16 = xq [m, w.k] e4m3 (scales [w.k / 128, m]) @ w^T.
    void linear(const uint8_t* xq, const float* xs, int64_t m, const cuda_model::DeviceLinear& w, uint16_t* y,
                int64_t y_stride);
    void linear(const uint8_t* xq, const float* xs, int64_t m, const cuda_model::DeviceLinear& w, uint16_t* y,
                int64_t y_stride, cuda::Fp8GemmRunner& fp8, cudaStream_t stream);
    bool use_fast_decode(const ForwardBatch& batch) const;
    void setup_tensor_parallel(const ModelOptions& options);  // before weights load: device, comm, local shapes
    void tp_all_reduce(uint16_t* buf, int64_t count);         // buf [count] bf16, no-op on one rank

    // This rank's shapes: with tensor parallelism heads and intermediate sizes are the rank's slice (vocab_size stays
    // whole: it sizes the logits the engine gets); m_full_config is the checkpoint's, which config() reports.
    ModelConfig m_config;
    ModelConfig m_full_config;
    // Tensor parallelism (ModelOptions::parallel): null on one rank. The embedding holds this rank's vocabulary
    // rows [m_vocab_begin, + m_vocab_local) plus one zero row that every other token id is mapped to.
    std::unique_ptr<cuda_model::TpComm> m_tp;
    int64_t m_vocab_begin = 0;
    int64_t m_vocab_local = 0;
    std::optional<Tensor> m_pending;       // [rows, vocab] logits of the step submit enqueued, until collect
    cuda_model::DeviceSampler m_sampler;   // the step's device-sampled rows (ForwardBatch::device_sampling)
    std::vector<int32_t> m_sampled;        // [rows] their tokens after collect, -1 for rows sampled on the host
    bool m_logits_rank = true;             // TP rank 0 (the DP leader): the only rank that copies logits to the host
    std::vector<int32_t> m_local_ids;      // [T] token ids mapped into the rank's embedding rows
    cuda::DeviceBuffer m_logits_gathered;  // [tp, rows, vocab / tp] f32: every rank's lm_head slice
    // Decode context parallelism (null without): the latent cache split by token over the DCP group.
    std::unique_ptr<cuda_model::DcpAttention> m_dcp;
    std::vector<int64_t> m_local_slots;  // [T] this rank's cache slot of every token (-1: another rank's)
    // Data + expert parallelism (dp > 1 with --enable-expert-parallel; null otherwise): the all-gather /
    // reduce-scatter of the routed experts over the EP group (every (dp, tp) rank, DP-major), each rank's slice padded
    // to the largest of the step's ForwardBatch::dp_num_tokens (m_dp_tokens). m_ep_rows_* place the rank's slice back
    // among its replica's tokens.
    std::unique_ptr<cuda_model::TpComm> m_ep;
    int m_tp_rank = 0;
    int m_tp_size = 1;
    int m_dp_rank = 0;
    int m_dp_size = 1;
    int64_t m_dp_max_tokens = 0;           // per replica (--max-num-batched-tokens): the padded size may not exceed it
    std::vector<int32_t> m_dp_tokens;      // [dp]
    int m_dp_graph_size = 0;               // this step's common decode graph size (0: an eager step)
    int64_t m_dp_exchange_rows = 0;        // rows per replica in this step's exchanges (a graph's, or the largest)
    cuda::DeviceBuffer m_ep_counts;        // [2, dp] i32: each replica's real tokens, then its forward rows
    cuda::DeviceBuffer m_ep_rows_pair;     // [T] i32: token t's row in this rank's slice, -1 outside it
    cuda::DeviceBuffer m_ep_rows_weight;   // [T] f32: 1
    std::vector<cudaEvent_t> m_ep_events;  // [layers, 4]: before/after the all-gather, before/after the reduce-scatter
    std::unique_ptr<cuda_model::MoePrefillLanes> m_moe_lanes;  // null: expert GEMMs of a prefill on m_stream
    ModelOptions m_options;
    cuda_model::DeviceWeights m_weights;
    cudaStream_t m_stream = nullptr;
    std::unique_ptr<cuda_model::SideStream> m_side;  // null with K2_SIDE_STREAM=0: everything on m_stream
    std::unique_ptr<cuda::Fp8GemmRunner> m_fp8;
    std::unique_ptr<cuda::Bf16GemmRunner> m_bf16;
    std::unique_ptr<cuda_model::Workspace> m_ws;
    std::unique_ptr<cuda_model::StepBatch> m_batch;        // eager steps (buffers grow)
    std::unique_ptr<cuda_model::StepBatch> m_graph_batch;  // graph steps (fixed buffers the graphs point at)
    std::map<int, cudaGraphExec_t> m_graphs;               // padded decode batch size -> instantiated graph
    int m_graph_blocks = 0;                                // block-table width of graph batches
    bool m_profile_layers = false;
    std::vector<cudaEvent_t> m_layer_events;  // [2 * num_layers + 1]
    std::vector<cudaEvent_t> m_comm_events;   // [2 * num_layers]: before each sublayer's all-reduce (TP only)
    cuda::DeviceBuffer m_cache;               // [layers, num_blocks * block_size, entry] bf16 or e4m3
    cuda::DeviceBuffer m_inv_freq;            // [rope / 2] f32
    float m_rope_scale = 1.0f;
    float m_softmax_scale = 1.0f;
    int m_num_blocks = 0;
    int m_num_sms = 0;
};

}  // namespace k2

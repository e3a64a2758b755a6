// Device buffers of the CUDA model runner: the activations of one step (Workspace) and the step's index arrays
// (StepBatch). Sized once, so pointers stay fixed for CUDA-graph replays.
#pragma once

#include <algorithm>
#include <memory>
#include <vector>

#include "backend/cuda/device_buffer.h"
#include "backend/cuda/fp8_gemm.h"
#include "backend/cuda/fp8_quant.h"
#include "io/model_config.h"
#include "model/cuda/mla_prefill_step.h"

namespace k2::cuda_model {

// Logits rows per lm_head GEMM: bounds the f32 logits buffer ([rows, vocab]) for prompt_logprobs-sized requests.
inline constexpr int64_t kLogitsRowsPerPass = 256;

inline int64_t round_up(int64_t x, int64_t m) {
    return (x + m - 1) / m * m;
}

// A device buffer that grows to the largest request (contents are not kept; eager-only buffers: graphs keep
// pointers).
inline void ensure(cuda::DeviceBuffer& buf, size_t num_bytes) {
    if (buf.num_bytes() < num_bytes) {
        buf = cuda::DeviceBuffer(std::max(num_bytes, buf.num_bytes() * 2));
    }
}

// Activations of one step, sized for max_num_tokens tokens (T) and T * top_k permuted expert rows (P).
struct Workspace {
    // Every row buffer has 16 rows of slack past max_tokens (and past P): a GEMM with m % 16 != 0 runs on cuBLASLt
    // with m rounded up (Fp8GemmParams::padded_rows), and the extra rows' garbage lands there.
    Workspace(const ModelConfig& c, int64_t max_tokens) : capacity(max_tokens) {
        const int64_t t = max_tokens + 16;
        const int64_t heads = c.num_attention_heads;
        const int64_t entry = c.kv_lora_rank + c.qk_rope_head_dim;
        const int64_t shared_inter = c.moe_intermediate_size * std::max<int64_t>(c.n_shared_experts, 1);
        const int64_t inter = std::max(c.intermediate_size, shared_inter);
        const int64_t kmax = std::max({c.hidden_size, c.q_lora_rank, heads * c.v_head_dim, inter});
        const int64_t p = max_tokens * std::max<int64_t>(c.num_experts_per_tok, 1) + 16;
        const int64_t mi = c.moe_intermediate_size;
        auto bf16 = [](int64_t n) { return cuda::DeviceBuffer(static_cast<size_t>(n) * 2); };
        auto f32 = [](int64_t n) { return cuda::DeviceBuffer(static_cast<size_t>(n) * 4); };
        h = bf16(t * c.hidden_size);
        y = bf16(t * c.hidden_size);
        xb = bf16(t * c.hidden_size);
        xq = cuda::DeviceBuffer(static_cast<size_t>(t * round_up(kmax, 128)));
        xs = f32(round_up(kmax, 128) / 128 * t);
        aux_xq = cuda::DeviceBuffer(static_cast<size_t>(t * round_up(kmax, 128)));
        aux_xs = f32(round_up(kmax, 128) / 128 * t);
        qa = bf16(t * std::max<int64_t>(c.q_lora_rank, 1));
        q = bf16(t * heads * c.qk_head_dim());
        kv = bf16(t * entry);
        q_abs = bf16(t * heads * entry);
        o_lat = bf16(t * heads * c.kv_lora_rank);
        o = bf16(t * heads * c.v_head_dim);
        gate_up = bf16(t * 2 * inter);
        if (c.n_routed_experts > 0) {
            router_logits = f32(t * c.n_routed_experts);
            topk_ids = cuda::DeviceBuffer(static_cast<size_t>(p) * 4);
            topk_weights = f32(p);
            offsets = cuda::DeviceBuffer(static_cast<size_t>(c.n_routed_experts + 1) * 4);
            row_token = cuda::DeviceBuffer(static_cast<size_t>(p) * 4);
            pair_row = cuda::DeviceBuffer(static_cast<size_t>(p) * 4);
            xg = cuda::DeviceBuffer(static_cast<size_t>(p * c.hidden_size));
            xgs = f32(p * c.hidden_size / 128);
            gug = bf16(p * 2 * mi);
            actg = cuda::DeviceBuffer(static_cast<size_t>(p * mi));
            acts = f32(p * round_up(mi, 128) / 128);
            acts_blocked = f32(p * round_up(mi, 128) / 128);
            yg = bf16(p * c.hidden_size);
            shared = bf16(t * c.hidden_size);
            padded_scales = f32(round_up(std::max(c.hidden_size, mi), 128) / 128 * t);
        }
        ctx_capacity = mla_prefill_ctx_capacity(c, max_tokens);
        if (ctx_capacity > 0) {  // the non-absorbed prefill path (mla_prefill_step.h)
            latent_ctx = bf16(ctx_capacity * entry);
            k_nope_ctx = bf16(ctx_capacity * heads * c.qk_nope_head_dim);
            v_ctx = bf16(ctx_capacity * heads * c.v_head_dim);
        }
        const int64_t rows = std::min(max_tokens, kLogitsRowsPerPass);
        last = bf16(rows * c.hidden_size);
        logits = f32(rows * c.vocab_size);
        logits_host = pinned_logits(rows * c.vocab_size);
    }

    // Pinned host floats, freed when the last Tensor viewing them is gone.
    static std::shared_ptr<float> pinned_logits(int64_t count) {
        void* ptr = nullptr;
        CUDA_CHECK(cudaHostAlloc(&ptr, static_cast<size_t>(count) * 4, cudaHostAllocDefault));
        return std::shared_ptr<float>(static_cast<float*>(ptr), [](float* p) { cudaFreeHost(p); });
    }
    Workspace(const Workspace&) = delete;
    Workspace& operator=(const Workspace&) = delete;

    int64_t capacity;
    cuda::DeviceBuffer h, y, xb;        // [T, hidden] bf16: residual, sublayer output, normed input
    cuda::DeviceBuffer xq, xs;          // [T, k] e4m3 and [k / 128, T] f32: a GEMM's quantized input
    cuda::DeviceBuffer aux_xq, aux_xs;  // as xq / xs, for GEMM inputs made while another stream still reads xq
    cuda::DeviceBuffer qa;              // [T, q_lora_rank] bf16
    cuda::DeviceBuffer q;               // [T, heads, qk_head_dim] bf16
    cuda::DeviceBuffer kv;              // [T, kv_lora_rank + rope] bf16
    cuda::DeviceBuffer q_abs;           // [T, heads, kv_lora_rank + rope] bf16
    cuda::DeviceBuffer o_lat;           // [T, heads, kv_lora_rank] bf16
    cuda::DeviceBuffer o_lat_f32;       // [seqs, heads, kv_lora_rank] f32 (fast decode)
    cuda::DeviceBuffer mla_split;       // fast decode split partials
    cuda::DeviceBuffer o;               // [T, heads * v_head_dim] bf16
    cuda::DeviceBuffer gate_up;         // [T, 2 * inter] bf16
    cuda::DeviceBuffer router_logits;   // [T, experts] f32
    cuda::DeviceBuffer topk_ids;        // [T, top_k] i32
    cuda::DeviceBuffer topk_weights;    // [T, top_k] f32
    cuda::DeviceBuffer offsets;         // [experts + 1] i32
    cuda::DeviceBuffer row_token;       // [P] i32
    cuda::DeviceBuffer pair_row;        // [T, top_k] i32
    cuda::DeviceBuffer xg, xgs;         // [P, hidden] e4m3, [P * hidden / 128] f32 expert-blocked
    cuda::DeviceBuffer gug;             // [P, 2 * moe_inter] bf16
    cuda::DeviceBuffer actg;            // [P, moe_inter] e4m3
    cuda::DeviceBuffer acts;            // [moe_inter / 128, P] f32
    cuda::DeviceBuffer acts_blocked;    // [P * moe_inter / 128] f32 expert-blocked
    cuda::DeviceBuffer yg;              // [P, hidden] bf16
    cuda::DeviceBuffer shared;          // [T, hidden] bf16
    cuda::DeviceBuffer padded_scales;   // [hidden / 128, T + 16] f32: one expert's scales re-strided for cuBLASLt
    cuda::DeviceBuffer last;            // [rows, hidden] bf16: the rows whose logits are wanted, normed
    int64_t ctx_capacity = 0;           // context tokens of the prefill path's buffers (0: path unavailable)
    cuda::DeviceBuffer latent_ctx;      // [ctx, kv_lora_rank + rope] bf16: gathered latents of a prefill step
    cuda::DeviceBuffer k_nope_ctx;      // [ctx, heads, nope] bf16: expanded keys
    cuda::DeviceBuffer v_ctx;           // [ctx, heads, v_head_dim] bf16: expanded values
    cuda::DeviceBuffer logits;          // [rows, vocab] f32
    // [rows, vocab] f32 pinned: forward returns a view of it (a new one when a caller still holds the last result).
    std::shared_ptr<float> logits_host;
    std::vector<int32_t> host_offsets;
};

// The launches that write a GEMM input into the workspace: x [T, width] bf16 -> ws.xq [T, width] e4m3 with scales
// ws.xs [width / 128, round_up_16(T)] (the padded stride lets cuBLASLt run m % 16 != 0 as the next multiple of 16).
inline void quantize_into(Workspace& ws, const uint16_t* x, int64_t num_tokens, int64_t width, cudaStream_t stream) {
    cuda::Fp8QuantParams q;
    q.x = x;
    q.out = ws.xq.as<uint8_t>();
    q.out_scale = ws.xs.as<float>();
    q.num_tokens = num_tokens;
    q.hidden = width;
    q.x_stride = width;
    q.out_stride = width;
    q.scale_stride = cuda::round_up_16(num_tokens);
    cuda::launch_fp8_quant(q, stream);
}

// rms_norm(x (+ residual, which is updated)) * weight, quantized into ws.xq / ws.xs as above (or into out /
// out_scale, e.g. ws.aux_xq / ws.aux_xs, laid out the same way); with out_bf16 ([num_tokens, width] bf16) also the
// normed rows themselves, bit for bit what the quantization saw.
inline void norm_quantize_into(Workspace& ws, const uint16_t* x, uint16_t* residual, const uint16_t* weight,
                               int64_t num_tokens, int64_t width, float eps, cudaStream_t stream,
                               uint8_t* out = nullptr, float* out_scale = nullptr, uint16_t* out_bf16 = nullptr) {
    cuda::RmsNormQuantParams n;
    n.x = x;
    n.residual = residual;
    n.weight = weight;
    n.out = out != nullptr ? out : ws.xq.as<uint8_t>();
    n.out_scale = out_scale != nullptr ? out_scale : ws.xs.as<float>();
    n.num_tokens = num_tokens;
    n.hidden = width;
    n.x_stride = width;
    n.out_stride = width;
    n.scale_stride = cuda::round_up_16(num_tokens);
    n.eps = eps;
    n.out_bf16 = out_bf16;
    n.out_bf16_stride = out_bf16 != nullptr ? width : 0;
    cuda::launch_rms_norm_quant(n, stream);
}

// silu(gate) * up of gate_up [rows, 2 * inter] (row stride gate_up_stride) into out [rows, inter] e4m3 and
// out_scale [inter / 128, scale_stride].
inline void silu_mul_quantize(const uint16_t* gate_up, int64_t gate_up_stride, int64_t rows, int64_t inter,
                              uint8_t* out, float* out_scale, int64_t scale_stride, cudaStream_t stream) {
    cuda::SiluMulQuantParams sq;
    sq.gate_up = gate_up;
    sq.out = out;
    sq.out_scale = out_scale;
    sq.num_tokens = rows;
    sq.inter = inter;
    sq.gate_up_stride = gate_up_stride;
    sq.out_stride = inter;
    sq.scale_stride = scale_stride;
    cuda::launch_silu_mul_quant(sq, stream);
}

// The index arrays of one step on the device, and the host-side shape the launches need.
struct StepBatch {
    cuda::DeviceBuffer token_ids;       // [T] i32
    cuda::DeviceBuffer positions;       // [T] i32
    cuda::DeviceBuffer slot_mapping;    // [T] i64
    cuda::DeviceBuffer token_seq;       // [T] i32
    cuda::DeviceBuffer seq_lens;        // [S] i32
    cuda::DeviceBuffer block_tables;    // [S, max_blocks] i32
    cuda::DeviceBuffer logits_indices;  // [R] i32
    std::vector<int32_t> host_token_seq;
    int64_t num_tokens = 0;
    int num_seqs = 0;
    int max_blocks_per_seq = 0;
    int max_context = 0;       // host bound of seq_lens (a graph's: its capture bound)
    bool fast_decode = false;  // the split-KV decode kernel applies
    // The non-absorbed prefill path (prepare_mla_prefill, eager steps only).
    bool mla_prefill = false;
    cuda::DeviceBuffer cu_seqlens_q;  // [S + 1] i32
    cuda::DeviceBuffer cu_seqlens_k;  // [S + 1] i32
    cuda::DeviceBuffer ctx_slots;     // [num_ctx] i64 cache slot of every context token
    std::vector<int32_t> host_cu_q, host_cu_k;
    std::vector<int64_t> host_ctx_slots;
    int64_t num_ctx = 0;
    int max_q_len = 0;
};

}  // namespace k2::cuda_model

// MoE data movement and the grouped FP8 expert GEMM of the CUDA model runner (the router is moe_router.h).
// Flow per MoE layer: permute (topk ids -> rows grouped by expert) -> gather the quantized tokens into those rows
// -> grouped gate_up GEMM -> silu_mul_quant -> grouped down GEMM -> combine (weighted sum back per token + shared
// expert). P = num_tokens * top_k permuted rows; expert e owns rows [offsets[e], offsets[e + 1]).
// CPU reference of the whole: the MoE of DeepseekV3Model (src/model/deepseek_v3.cpp) over cpu::linear.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <span>

#include "backend/cuda/fp8_gemm.h"

namespace k2::cuda {

// Stable counting sort of the (token, k) pairs by expert: within an expert, rows follow pair order t * top_k + k.
// One block, deterministic (no atomics). Expert ids are taken relative to expert_begin (expert parallelism: this
// rank's experts are [expert_begin, expert_begin + num_experts)); an id outside that range gets no row: pair_row
// -1, not counted in offsets[num_experts] (gather and combine skip it). num_tokens == 0 writes nothing.
struct MoePermuteParams {
    const int32_t* topk_ids = nullptr;  // [num_tokens, top_k] global expert ids
    int32_t* offsets = nullptr;         // [num_experts + 1] out
    int32_t* row_token = nullptr;       // [P] out: source token of each permuted row
    int32_t* pair_row = nullptr;        // [num_tokens, top_k] out: permuted row of each pair
    int64_t num_tokens = 0;
    int top_k = 0;
    int num_experts = 0;   // <= 512
    int expert_begin = 0;  // global id of local expert 0
};

// Quantized rows into expert order. Scales are expert-blocked: expert e's scales start at
// out_scale + offsets[e] * (k / 128), laid out [k / 128, n_e] (n_e = its row count), which is both what cuBLASLt
// needs per expert (x_scale_stride == n_e) and what the grouped kernel reads.
struct MoeGatherParams {
    const uint8_t* x = nullptr;          // [num_tokens, k] e4m3, row stride k
    const float* x_scale = nullptr;      // [k / 128, x_scale_stride] f32
    const int32_t* row_token = nullptr;  // [P]
    const int32_t* offsets = nullptr;    // [num_experts + 1]
    uint8_t* out = nullptr;              // [P, k] e4m3
    float* out_scale = nullptr;          // [P * k / 128] f32, expert-blocked
    int64_t num_rows = 0;                // P
    int64_t k = 0;                       // multiple of 128
    int64_t x_scale_stride = 0;
    int num_experts = 0;
};

// The two forms of the decode launch (kernels/fp8_grouped_gemm.cuh), bitwise-equal outputs. Blocks: one block per
// 64 rows of n per expert, empty experts' blocks exit. Persistent: as many blocks as fit on the GPU at once, the
// touched experts' 16-row slices dealt in equal contiguous ranges to the warps. Auto = Persistent up to 512 experts
// and 64 rows per expert (max_rows_per_expert) unless the environment says K2_MOE_DECODE_KERNEL=blocks (A/B runs).
enum class GroupedDecodeKernel { Auto, Blocks, Persistent };

// y[rows of e] = x[rows of e] @ w[e]^T for every expert, fp32 accumulation, bf16 out; block scales as fp8_gemm.h.
// The decode form is one launch that reads the row counts on the device (CUDA-graph capturable);
// max_rows_per_expert (a host bound, e.g. num_tokens) sizes the token tiles.
// (It only sizes them: an expert with more rows takes more passes. 0 makes the launch a no-op.)
struct Fp8GroupedGemmParams {
    const uint8_t* x = nullptr;        // [P, k] e4m3 (row stride k)
    const float* x_scale = nullptr;    // expert-blocked, as MoeGatherParams::out_scale
    const uint8_t* w = nullptr;        // [num_experts, n, k] e4m3
    const float* w_scale = nullptr;    // [num_experts, n / 128, k / 128] f32
    uint16_t* y = nullptr;             // [P, n] bf16 (row stride n)
    const int32_t* offsets = nullptr;  // [num_experts + 1] device
    int num_experts = 0;
    int64_t n = 0;  // multiple of 128
    int64_t k = 0;  // multiple of 128
    int64_t max_rows_per_expert = 0;
    // Decode form only. l2_ahead: k blocks ahead of the loads at which the persistent form bulk-prefetches each
    // weight row into L2 (0 = none; -1 = K2_MOE_DECODE_L2_AHEAD, else 4 for 4..64 tokens per expert, as measured),
    // a tuning knob that changes no result.
    GroupedDecodeKernel decode_kernel = GroupedDecodeKernel::Auto;
    int l2_ahead = -1;
    // Persistent form, up to 16 rows per expert: decode_k_split 4 = each 16-row slice's k split over a block's 4
    // warps (deterministic, rounded differently from one warp's sum), 1 = never, 0 = up to 8 rows per expert, or
    // where even max_touched_experts (a host bound on the experts with rows, e.g. min(num_experts, tokens x top_k);
    // 0 = num_experts) would leave fewer than 4 slices per warp (an expert-parallel rank's share of a few).
    // K2_MOE_DECODE_KSPLIT=1 turns auto (0) into never (A/B runs).
    int decode_k_split = 0;
    int64_t max_touched_experts = 0;
};

// The checks every grouped GEMM launch shares, each error naming `op`: 1..max_experts experts, n and k positive
// multiples of 128, every operand set, x and w 16-byte aligned.
void check_grouped_gemm_params(const Fp8GroupedGemmParams& params, int max_experts, const char* op);

void launch_moe_permute(const MoePermuteParams& params, cudaStream_t stream);
void launch_moe_gather(const MoeGatherParams& params, cudaStream_t stream);
void launch_fp8_grouped_gemm_decode(const Fp8GroupedGemmParams& params, cudaStream_t stream);
// The form launch_fp8_grouped_gemm_decode runs for `params` (Auto resolved).
GroupedDecodeKernel grouped_decode_kernel(const Fp8GroupedGemmParams& params);
// Prefill form: one Fp8GemmRunner call per expert with rows; host_offsets [num_experts + 1] are the offsets
// already copied to the host (the caller synchronizes once per layer for them). Where k / 128 is not a multiple
// of 4 every expert stays on our decode kernel (cuBLASLt pads the k blocks of 128x128 scales to 4).
// With padded_scales [k / 128 * round_up(max rows of an expert, 16)] f32 and 15 rows of slack after x's and y's P
// rows, experts whose row count is not a multiple of 16 still run on cuBLASLt (whose FP8 path needs m % 16 == 0):
// their scale block is copied there with a padded stride and the padded rows' outputs land on the next expert's
// rows, which that expert's GEMM (later on the stream) overwrites. Without it such experts run our kernel.
void run_fp8_grouped_gemm_prefill(Fp8GemmRunner& runner, const Fp8GroupedGemmParams& params,
                                  const int32_t* host_offsets, cudaStream_t stream, float* padded_scales = nullptr);

// One lane of the concurrent prefill form below: its own cuBLASLt runner (workspace), stream, completion event and
// scratch. y_scratch: [round_up(max rows of an expert, 16), n] bf16.
struct Fp8PrefillLane {
    Fp8GemmRunner* runner = nullptr;
    cudaStream_t stream = nullptr;
    cudaEvent_t done = nullptr;
    float* padded_scales = nullptr;  // as run_fp8_grouped_gemm_prefill's
    uint16_t* y_scratch = nullptr;
};

// The prefill form over several streams: a single expert's GEMM (~170 rows at an 8k prefill of Kimi-K2) fills only
// half the SMs, so the lanes take contiguous expert ranges of about equal rows and run side by side, after `fork`
// is recorded on `stream` and before `stream` waits for every lane. The last expert of a range writes its padded
// rows through the lane's y_scratch (then copies the real rows out) instead of onto the next range's first expert,
// which another lane may have written already.
void run_fp8_grouped_gemm_prefill_lanes(std::span<const Fp8PrefillLane> lanes, const Fp8GroupedGemmParams& params,
                                        const int32_t* host_offsets, cudaStream_t stream, cudaEvent_t fork);

// out[t] = sum_k topk_weights[t, k] * y[pair_row[t, k]] (+ shared[t]), summed in fp32 in k order, rounded once.
// pair_row < 0 contributes nothing; hidden must be a multiple of 8 (16-byte rows).
struct MoeCombineParams {
    const uint16_t* y = nullptr;          // [P, hidden] bf16 expert outputs
    const int32_t* pair_row = nullptr;    // [num_tokens, top_k]
    const float* topk_weights = nullptr;  // [num_tokens, top_k]
    const uint16_t* shared = nullptr;     // [num_tokens, hidden] bf16 shared-expert output, or null
    uint16_t* out = nullptr;              // [num_tokens, hidden] bf16
    int64_t num_tokens = 0;
    int64_t hidden = 0;
    int top_k = 0;
};

void launch_moe_combine(const MoeCombineParams& params, cudaStream_t stream);

// Data + expert parallelism: the rows gathered from the EP group ([ep * slice_rows], ep = dp * tp, DP-major) hold
// EP rank i's slice at [i * slice_rows, (i + 1) * slice_rows). Rank i = (replica d = i / tp, TP rank r = i % tp)
// sent rows [T_d * r / tp, T_d * (r + 1) / tp) of its replica's T_d forward rows, of which the first n_d are real
// tokens (T_d > n_d: a decode graph's padding); the rest of the slice is zeros. Every pair of a row that is not a real
// token gets expert id -1, outside every rank's experts. The counts are read on the device, so a CUDA graph replays
// with each step's.
struct MoeEpDropParams {
    int32_t* topk_ids = nullptr;      // [dp * tp * slice_rows, top_k]
    const int32_t* counts = nullptr;  // [2, dp]: n_d, then T_d >= n_d
    int dp = 0;
    int tp = 0;
    int64_t slice_rows = 0;  // >= ceil(T_d / tp) for every d
    int top_k = 0;
};

void launch_moe_ep_drop_padding(const MoeEpDropParams& params, cudaStream_t stream);

}  // namespace k2::cuda

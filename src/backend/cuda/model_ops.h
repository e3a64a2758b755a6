// Small ops of the CUDA model runner that have no FP8 GEMM behind them: embedding gather, RMSNorm with bf16
// output (the MoE router's input), row gather (the rows whose logits are wanted) and f32 -> bf16.
// CPU references: cpu::embedding, cpu::rms_norm (src/backend/cpu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace k2::cuda {

struct EmbeddingParams {
    const int32_t* token_ids = nullptr;  // [num_tokens]
    const uint16_t* table = nullptr;     // [vocab, hidden] bf16
    uint16_t* out = nullptr;             // [num_tokens, hidden] bf16 (ids outside [0, vocab) give a zero row)
    int64_t num_tokens = 0;
    int64_t hidden = 0;
    int64_t vocab = 0;
};

// out = rms_norm(x) * weight in fp32, rounded once to bf16. With residual: residual += x first (rounded to bf16,
// as the fused fp8 kernel does) and the sum is normalized. x and out may alias (in place: out == x with
// out_stride == x_stride); residual must alias neither. Any hidden in [1, 65536] (16-byte vectors when
// hidden % 8 == 0 and all rows are 16-byte aligned, element-wise otherwise). Summation order and formula are
// rms_norm_quant's (kernels/row_norm.cuh): fixed by hidden, the same for any batch size.
struct RmsNormParams {
    const uint16_t* x = nullptr;       // [num_tokens, hidden] bf16, row stride x_stride
    uint16_t* residual = nullptr;      // [num_tokens, hidden] bf16 or null, row stride hidden
    const uint16_t* weight = nullptr;  // [hidden] bf16
    uint16_t* out = nullptr;           // [num_tokens, hidden] bf16, row stride out_stride
    int64_t num_tokens = 0;
    int64_t hidden = 0;
    int64_t x_stride = 0;
    int64_t out_stride = 0;
    float eps = 1e-6f;
};

struct GatherRowsParams {
    const uint16_t* x = nullptr;     // [num_src_rows, width] bf16
    const int32_t* rows = nullptr;   // [num_rows] source row of each output row (< num_src_rows; negative: zeros)
    uint16_t* out = nullptr;         // [num_rows, width] bf16
    int64_t num_rows = 0;
    int64_t width = 0;
};

struct F32ToBf16Params {
    const float* x = nullptr;  // [count] f32
    uint16_t* out = nullptr;   // [count] bf16 (round to nearest even)
    int64_t count = 0;
};

void launch_embedding(const EmbeddingParams& params, cudaStream_t stream);
void launch_rms_norm(const RmsNormParams& params, cudaStream_t stream);
void launch_gather_rows(const GatherRowsParams& params, cudaStream_t stream);
void launch_f32_to_bf16(const F32ToBf16Params& params, cudaStream_t stream);

}  // namespace k2::cuda

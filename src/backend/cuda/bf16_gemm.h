// BF16 GEMMs through cuBLASLt, for the projections the FP8 path does not cover: the MoE router (f32 logits), the
// absorbed-MLA head matrices W_UK / W_UV (strided-batched over heads) and lm_head (f32 logits). fp32 accumulation.
//   b_is_nk (a Linear weight [n, k]):  c[b][m, n] = a[b][m, :] . b[b][n, :]      (y = x @ W^T)
//   !b_is_nk (a matrix [k, n]):        c[b][m, n] = sum_k a[b][m, k] * b[b][k, n] (y = x @ W)
// Strides are in elements; batch strides may be any value (e.g. one head's column offset inside a row).
// Requirements (k2::Error otherwise): m, n, k >= 0 and batch >= 1; m == 0 or n == 0 is a no-op (pointers unused);
// otherwise k > 0, non-null a/b/c aligned to their element size, lda >= k, ldb >= the row width of b (k or n),
// ldc >= n. Any further alignment is not required: the plan is chosen for the pointers' actual alignment (base
// address and batch stride), so 16-byte aligned head slices work. c is write-only (beta = 0): elements of c
// outside the product (ldc padding, other heads' columns) are never touched.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>

namespace k2::cuda {

struct Bf16GemmParams {
    const uint16_t* a = nullptr;  // [batch][m, k] bf16, row stride lda
    const uint16_t* b = nullptr;  // [batch][n, k] (b_is_nk) or [batch][k, n] bf16, row stride ldb
    void* c = nullptr;            // [batch][m, n] bf16 or f32 (c_f32), row stride ldc
    bool b_is_nk = true;
    bool c_f32 = false;
    int64_t m = 0;  // 0: nothing to do
    int64_t n = 0;
    int64_t k = 0;
    int64_t lda = 0;
    int64_t ldb = 0;
    int64_t ldc = 0;
    int batch = 1;
    int64_t a_batch_stride = 0;
    int64_t b_batch_stride = 0;
    int64_t c_batch_stride = 0;
};

// Owns the cuBLASLt handle, a workspace and a plan per shape (descriptors + the heuristic's algorithm), so a
// call costs one cublasLtMatmul and is CUDA-graph capturable. Not thread-safe: one runner per stream/worker.
class Bf16GemmRunner {
public:
    Bf16GemmRunner();
    ~Bf16GemmRunner();
    Bf16GemmRunner(const Bf16GemmRunner&) = delete;
    Bf16GemmRunner& operator=(const Bf16GemmRunner&) = delete;

    void run(const Bf16GemmParams& params, cudaStream_t stream);

private:
    struct State;
    std::unique_ptr<State> m_state;
};

}  // namespace k2::cuda

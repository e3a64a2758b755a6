// FP8 x FP8 block-scaled GEMM, y = x @ w^T: e4m3 activations with per-token 1x128 scales, e4m3 weights with
// 128x128 block multipliers (weight_scale_inv), fp32 accumulation, bf16 output:
//   y[m, n] = sum_kb x_scale[kb, m] * w_scale[n / 128, kb] * sum_{k in kb} x[m, k] * w[n, k]
// Two implementations: our weight-streaming decode kernel (num_tokens <= 64 per pass; mma.sync e4m3 with the
// weights loaded straight into registers, split-K reduced through a thread-block cluster; fast for <= 8 tokens) and
// cuBLASLt's block-scaled path (VEC128_32F x BLK128x128_32F, what torch._scaled_mm calls). Fp8GemmRunner picks one
// per shape (fp8_gemm_config.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

namespace k2::cuda {

struct Fp8GemmParams {
    const uint8_t* x = nullptr;      // [num_tokens, k] e4m3, row stride x_stride (bytes, multiple of 16)
    const float* x_scale = nullptr;  // [k / 128, x_scale_stride] f32, token-contiguous
    const uint8_t* w = nullptr;      // [n, k] e4m3, row-major
    const float* w_scale = nullptr;  // [ceil(n / 128), k / 128] f32 multipliers
    uint16_t* y = nullptr;           // [num_tokens, n] bf16, row stride y_stride (elements)
    int64_t num_tokens = 0;
    int64_t n = 0;  // multiple of 16 for the decode kernel
    int64_t k = 0;  // multiple of 128
    int64_t x_stride = 0;
    int64_t x_scale_stride = 0;
    int64_t y_stride = 0;
    // The caller's x, x_scale and y have rows up to round_up(num_tokens, 16) (x_scale_stride == that count): the
    // runner may then give cuBLASLt, which takes only m % 16 == 0 for FP8, the padded shape (the extra rows of y
    // receive garbage).
    bool padded_rows = false;
};

inline int64_t round_up_16(int64_t m) { return (m + 15) / 16 * 16; }

enum class Fp8GemmImpl : uint8_t { Auto, Decode, CublasLt, Wgmma };  // Wgmma: fp8_gemm_wgmma.h

inline constexpr int64_t kDecodeTokensPerPass = 64;

// Our kernel; any num_tokens (passes of 64 tokens, each streaming the weights once).
void launch_fp8_gemm_decode(const Fp8GemmParams& params, cudaStream_t stream);

// Owns the cuBLASLt handle, a workspace and per-shape plans (descriptors + the heuristic's algorithm), so a call
// costs one cublasLtMatmul. Not thread-safe: one runner per stream/worker.
class Fp8GemmRunner {
public:
    Fp8GemmRunner();
    ~Fp8GemmRunner();
    Fp8GemmRunner(const Fp8GemmRunner&) = delete;
    Fp8GemmRunner& operator=(const Fp8GemmRunner&) = delete;

    // Host heuristic (fp8_gemm_config.h): Wgmma where prefer_wgmma() says so (decode batches, <= 128 tokens), else
    // Decode below kCublasLtMinTokens, cuBLASLt from there on (n a multiple of 16 for Decode). Auto also falls back
    // to Decode where cuBLASLt has no algorithm for the shape.
    static Fp8GemmImpl choose(int64_t num_tokens, int64_t n, int64_t k);
    void run(const Fp8GemmParams& params, cudaStream_t stream, Fp8GemmImpl impl = Fp8GemmImpl::Auto);
    // cuBLASLt needs x_scale_stride == num_tokens and 16-byte aligned strides; throws where it has no algorithm.
    void run_cublaslt(const Fp8GemmParams& params, cudaStream_t stream);

private:
    struct Plan;
    struct State;
    Plan& plan_for(const Fp8GemmParams& params);  // cached per shape; Plan::supported says if cuBLASLt takes it
    bool try_cublaslt(const Fp8GemmParams& params, cudaStream_t stream);  // false: no algorithm for the shape
    // Runs the heuristic for plan's exact shape; a success also becomes the algorithm of bucket_key.
    void query_algo(Plan& plan, const std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>& bucket_key);
    std::unique_ptr<State> m_state;
};

}  // namespace k2::cuda

// Host-side choice between the decode kernel and cuBLASLt, from the measurements in docs/perf/kernels.md.
#pragma once

#include <cstdint>

namespace k2::cuda {

// Our weight-streaming kernel below kCublasLtMinTokens tokens, cuBLASLt from there on. Measured on the H200 against
// cuBLASLt 13.0 (docs/perf/kernels.md, 2026-11-29): at m <= 8 (one token tile, where our kernel is memory-bound) it
// is ahead of or even with cuBLASLt's 16-padded GEMM on 7 of 9 Kimi-K2 shapes (q_a+kv_a 1.49-1.73x) and behind on
// the wide q_b shapes (0.60-0.91x); from m = 16 on cuBLASLt streams 1.0-3.2 TB/s and our mma.sync kernel (no native
// e4m3 mma.sync on sm_90) falls behind. Below 16 cuBLASLt is not an option anyway: it rejects m = 1. (The NaN once
// seen at m = 12 came from k = 256: cuBLASLt wants the weight scales' k-blocks padded to 4, see choose().)
inline constexpr int64_t kCublasLtMinTokens = 16;

// The TMA + wgmma kernel (fp8_gemm_wgmma.h) where it measured faster than both cuBLASLt and the v1 decode kernel
// (docs/perf/kernels.md, "FP8 GEMM v5", H200, 2026-11-29, same-run cuBLASLt 13.0): every shape below 16 tokens
// (1.0-2.0x cuBLASLt's 16-padded GEMM, faster than v1 on every Kimi-K2 shape but kv_b, where it ties); up to 32
// tokens where k >= 2048 (1.09-1.89x; q_b k 1536 and kv_b k 512 are 0.92-0.95x: their few k blocks leave the
// fixed ~3 us of launch and ring fill uncovered); up to 64 tokens for n <= 8192 and k >= 4096 (1.02-1.53x; dense
// gate_up n 18432 is 0.96x; expert down k 2048 tied at 1.02x in session 4 and lost at 0.85x in session 8's run, so it
// goes to cuBLASLt from 33 tokens); up to 128 tokens for n <= 2560 (q_a+kv_a 1.19x, 1.01x in session 8: cuBLASLt
// fills only 17 column tiles there). Session 8 (kernels.md "Session 8: v5 at m 16-128", another H200) measured the
// dense MLP (n or k 18432) behind cuBLASLt from 16 tokens (0.89-0.98x) where session 4 had it ahead (1.11-1.22x):
// not moved on one disagreeing run.
inline constexpr int64_t kWgmmaAutoMaxTokens = 128;
inline constexpr bool prefer_wgmma(int64_t num_tokens, int64_t n, int64_t k) {
    if (num_tokens <= 0 || num_tokens > kWgmmaAutoMaxTokens || k % 128 != 0) return false;
    if (num_tokens < 16) return true;
    if (k < 2048) return false;
    if (num_tokens <= 32) return true;
    if (num_tokens <= 64) return n <= 8192 && k >= 4096;
    return n <= 2560;
}

// Split-K: enough 64-row blocks to keep every SM busy with a few blocks; at most a portable cluster (8).
inline constexpr int kDecodeTargetBlocks = 3 * 132;
inline constexpr int kDecodeMaxSplits = 8;

}  // namespace k2::cuda

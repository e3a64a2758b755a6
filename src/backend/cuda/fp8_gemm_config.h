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

// Split-K: enough 64-row blocks to keep every SM busy with a few blocks; at most a portable cluster (8).
inline constexpr int kDecodeTargetBlocks = 3 * 132;
inline constexpr int kDecodeMaxSplits = 8;

}  // namespace k2::cuda

// Host side of fp8_gemm_wgmma.h: validation, the split-K cost model and the TMA tensor maps (tma_map.h); the raw
// launch is in fp8_gemm_wgmma.cu.
#include "backend/cuda/fp8_gemm_wgmma.h"

#include <cuda.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <mutex>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/fp8_gemm_wgmma_detail.h"
#include "backend/cuda/tma_map.h"

namespace k2::cuda {
namespace {

constexpr int kMaxSplits = 8;  // a portable cluster
// Cost model of one launch (µs), fitted to the H200 sweep in docs/perf/kernels.md (2026-11-29; session 8's sweep
// confirmed its choices): CTAs run in waves of what fits at once (cudaOccupancyMaxActiveClusters: the cluster shape,
// shared memory and GPC structure decide); a wave takes the longer of its share of the weights at the HBM rate and
// one CTA's k range at the rate a single CTA pulls (its ring over the loaded latency: ~34 GB/s with 128 rows, ~20
// GB/s with 64), plus a fixed cost (launch, ring fill, epilogue) per wave; a split-K cluster adds its reduction.
// (Session 8 tried an L2-to-SM term for the activation re-reads at 64-128 tokens: multicast halved those bytes and
// ran slower, so the term and multicast are out of the model.)
constexpr double kHbmBytesPerUs = 3.9e6;
constexpr double kCta128BytesPerUs = 3.4e4;
constexpr double kCta64BytesPerUs = 2.0e4;
constexpr double kWaveUs = 3.0;
constexpr double kReduceUs = 0.3;
constexpr int kMaxL2Ahead = 64;
// Session 8 defaults (docs/perf/kernels.md "Session 8"): the L2 prefetch distance and programmatic dependent launch.
// The L2 prefetch lost on every shape (TMA already streams through L2; the prefetches compete with the loads);
// programmatic dependent launch needs callers whose previous kernel never writes the weights (see
// Fp8GemmWgmmaOptions), so it stays an opt-in (K2_WGMMA_PDL=1) until the model runs with it.
constexpr int kDefaultL2Ahead = 0;
constexpr int kDefaultPdl = 0;

void check_params(const Fp8GemmParams& p) {
    K2_CHECK(p.num_tokens > 0 && p.num_tokens <= kWgmmaMaxTokens,
             "fp8 wgmma gemm: num_tokens = {} is outside 1..{} (use the cuBLASLt path for larger batches)",
             p.num_tokens, kWgmmaMaxTokens);
    K2_CHECK(p.k > 0 && p.k % 128 == 0, "fp8 wgmma gemm: k = {} is not a positive multiple of 128", p.k);
    K2_CHECK(p.n > 0, "fp8 wgmma gemm: n = {} must be positive", p.n);
    K2_CHECK(p.x_stride >= p.k && p.x_stride % 16 == 0,
             "fp8 wgmma gemm: x_stride {} (k {}) must be >= k and a "
             "multiple of 16",
             p.x_stride, p.k);
    K2_CHECK(p.y_stride >= p.n, "fp8 wgmma gemm: y_stride {} < n {}", p.y_stride, p.n);
    K2_CHECK(p.x_scale_stride >= p.num_tokens, "fp8 wgmma gemm: x_scale_stride {} < num_tokens {}", p.x_scale_stride,
             p.num_tokens);
    K2_CHECK(p.x != nullptr && p.w != nullptr && p.x_scale != nullptr && p.w_scale != nullptr && p.y != nullptr,
             "fp8 wgmma gemm: null operand");
    K2_CHECK(reinterpret_cast<uintptr_t>(p.x) % 16 == 0 && reinterpret_cast<uintptr_t>(p.w) % 16 == 0,
             "fp8 wgmma gemm: x and w must be 16-byte aligned (TMA)");
}

int tokens_tile_for(int64_t num_tokens) {
    for (const int tile : {16, 32, 64}) {
        if (num_tokens <= tile)
            return tile;
    }
    return 128;
}

// Clusters of [mcast, splits] CTAs of the variant that fit at once (cached; -1: none fit).
int max_active_clusters(const detail::WgmmaVariant& variant, int splits) {
    static std::mutex mutex;
    static std::array<std::array<std::array<std::array<int, kMaxSplits + 1>, 3>, 4>, 2> cache{};
    const int t = variant.tokens_tile;
    const size_t tile_index = t == 16 ? 0 : t == 32 ? 1 : t == 64 ? 2 : 3;
    const size_t mcast_index = variant.mcast == 1 ? 0 : variant.mcast == 2 ? 1 : 2;
    const std::lock_guard<std::mutex> lock(mutex);
    int& cached = cache[variant.rows == 64 ? 0 : 1][tile_index][mcast_index][static_cast<size_t>(splits)];
    if (cached == 0) {
        int clusters = 0;
        CUDA_CHECK(detail::fp8_gemm_wgmma_max_active_clusters(variant, splits, &clusters));
        cached = clusters > 0 ? clusters : -1;
    }
    return cached;
}

int env_int(const char* name, int fallback) {
    const char* env = std::getenv(name);
    return env != nullptr ? std::atoi(env) : fallback;
}

double predicted_us(int64_t n, int64_t k, const detail::WgmmaVariant& v, int splits, int kb_per_split,
                    int cluster_slots) {
    const int64_t tiles = (n + v.rows - 1) / v.rows;
    const int64_t clusters = (tiles + v.mcast - 1) / v.mcast;
    const double weight_bytes = static_cast<double>(n) * k;
    const double cta_us =
        static_cast<double>(kb_per_split) * v.rows * 128 / (v.rows == 128 ? kCta128BytesPerUs : kCta64BytesPerUs);
    auto wave_us = [&](int64_t wave_clusters) {
        const double share = static_cast<double>(wave_clusters) / static_cast<double>(clusters);
        return std::max(weight_bytes * share / kHbmBytesPerUs, cta_us) + kWaveUs;
    };
    const int64_t full_waves = clusters / cluster_slots;
    const int64_t rest = clusters % cluster_slots;
    return static_cast<double>(full_waves) * wave_us(cluster_slots) + (rest > 0 ? wave_us(rest) : 0.0) +
           (splits > 1 ? kReduceUs : 0.0);
}

// A 2-D e4m3 tensor map [rows, cols] (row stride `stride` bytes) read in boxes of [box_rows, 128] with the 128B
// swizzle wgmma's descriptors expect; out-of-bounds rows read as zeros.
CUtensorMap make_tensor_map(const uint8_t* base, int64_t rows, int64_t cols, int64_t stride, int box_rows) {
    TmaMap2d spec;
    spec.base = base;
    spec.rows = rows;
    spec.cols = cols;
    spec.stride_bytes = stride;
    spec.box_rows = box_rows;
    spec.box_cols = 128;
    return make_tma_map_2d(spec, "fp8 wgmma gemm");
}

}  // namespace

Fp8GemmWgmmaConfig fp8_gemm_wgmma_config(int64_t num_tokens, int64_t n, int64_t k, const Fp8GemmWgmmaOptions& options) {
    K2_CHECK(options.rows == 0 || options.rows == 64 || options.rows == 128,
             "fp8 wgmma gemm: rows per CTA {} is not 64 or 128", options.rows);
    K2_CHECK(options.l2_ahead >= -1 && options.l2_ahead <= kMaxL2Ahead, "fp8 wgmma gemm: l2_ahead {} is outside -1..{}",
             options.l2_ahead, kMaxL2Ahead);
    K2_CHECK(options.pdl >= -1 && options.pdl <= 2, "fp8 wgmma gemm: pdl {} is not -1, 0, 1 or 2", options.pdl);
    K2_CHECK(options.mcast == 0 || options.mcast == 1 || options.mcast == 2 || options.mcast == 4,
             "fp8 wgmma gemm: mcast {} is not 1, 2 or 4", options.mcast);
    Fp8GemmWgmmaConfig best;
    best.tokens_tile = tokens_tile_for(num_tokens);
    K2_CHECK(options.mcast <= 1 || (best.tokens_tile >= 64 && options.rows != 64),
             "fp8 wgmma gemm: mcast {} needs 128-row CTAs and more than 32 tokens (m = {}, rows {})", options.mcast,
             num_tokens, options.rows);
    const int num_kb = static_cast<int>(k / 128);
    const int max_splits = std::min(kMaxSplits, num_kb);
    double best_us = 0.0;
    for (const int rows : {64, 128}) {
        if (options.rows != 0 && rows != options.rows)
            continue;
        // From 33 tokens on, 64-row CTAs lose (measured): their ring is 4-6 stages deep next to the activation
        // tiles, and two CTAs per SM read the activations twice.
        if (options.rows == 0 && rows == 64 && best.tokens_tile >= 64)
            continue;
        for (const int mcast : {1, 2, 4}) {
            if (options.mcast > 0 ? mcast != options.mcast : mcast > 1)
                continue;  // multicast only where forced: it measured slower everywhere (docs/perf/kernels.md)
            if (mcast > 1 && rows != 128)
                continue;
            const detail::WgmmaVariant variant{rows, best.tokens_tile, mcast};
            for (int s = 1; s * mcast <= kMaxSplits && s <= max_splits; ++s) {
                if (options.splits > 0 && s != std::min(options.splits, max_splits))
                    continue;
                const int kb_per_split = (num_kb + s - 1) / s;
                const int splits = (num_kb + kb_per_split - 1) / kb_per_split;  // no empty split
                if (splits != s && options.splits == 0)
                    continue;  // the same launch as a smaller s
                const int clusters = max_active_clusters(variant, splits);
                if (clusters <= 0)
                    continue;
                const double us = predicted_us(n, k, variant, splits, kb_per_split, clusters);
                if (best.splits == 0 || us < best_us * 0.98) {  // ties go to the earlier (64 rows, fewer splits)
                    best_us = us;
                    best.rows = rows;
                    best.splits = splits;
                    best.kb_per_split = kb_per_split;
                    best.mcast = mcast;
                }
            }
        }
    }
    K2_CHECK(best.splits > 0, "fp8 wgmma gemm: no launchable configuration for n {} k {} (rows {} splits {} mcast {})",
             n, k, options.rows, options.splits, options.mcast);
    best.l2_ahead = options.l2_ahead >= 0 ? options.l2_ahead : kDefaultL2Ahead;
    best.pdl = options.pdl >= 0 ? options.pdl : kDefaultPdl;
    return best;
}

void launch_fp8_gemm_wgmma(const Fp8GemmParams& params, cudaStream_t stream, const Fp8GemmWgmmaOptions& options) {
    if (params.num_tokens == 0) {
        return;
    }
    check_params(params);
    // NOTE: the K2_WGMMA_* variables override the cost model (tuning knobs for the benchmark).
    static const Fp8GemmWgmmaOptions env = {env_int("K2_WGMMA_SPLITS", 0), env_int("K2_WGMMA_ROWS", 0),
                                            env_int("K2_WGMMA_L2_AHEAD", -1), env_int("K2_WGMMA_PDL", -1),
                                            env_int("K2_WGMMA_MCAST", 0)};
    const Fp8GemmWgmmaOptions merged = {
        options.splits > 0 ? options.splits : env.splits, options.rows > 0 ? options.rows : env.rows,
        options.l2_ahead >= 0 ? options.l2_ahead : env.l2_ahead, options.pdl >= 0 ? options.pdl : env.pdl,
        options.mcast > 0 ? options.mcast : (params.num_tokens > 32 ? env.mcast : 0)};
    const Fp8GemmWgmmaConfig config = fp8_gemm_wgmma_config(params.num_tokens, params.n, params.k, merged);
    const CUtensorMap tmap_w = make_tensor_map(params.w, params.n, params.k, params.k, config.rows);
    const CUtensorMap tmap_x =
        make_tensor_map(params.x, params.num_tokens, params.k, params.x_stride, config.tokens_tile / config.mcast);
    const detail::WgmmaVariant variant{config.rows, config.tokens_tile, config.mcast};
    CUDA_CHECK(detail::launch_fp8_gemm_wgmma_kernel(tmap_w, tmap_x, params, variant, config.splits, config.kb_per_split,
                                                    config.l2_ahead, config.pdl, stream));
}

}  // namespace k2::cuda

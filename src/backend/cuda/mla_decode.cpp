#include "backend/cuda/mla_decode.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/launch_detail.h"
#include "backend/cuda/mla_decode_wgmma_detail.h"
#include "backend/cuda/tma_map.h"

namespace k2::cuda {

int mla_decode_num_splits(const MlaDecodeParams& p, int num_sms) {
    if (p.num_splits > 0) {
        return p.num_splits;
    }
    const int64_t ctas = p.num_seqs * mla_decode_head_groups(p.num_heads);
    const int max_pages = (p.max_seq_len + kMlaPageTokens - 1) / kMlaPageTokens;
    // One CTA per SM (224 KB of shared memory each): one wave of splits.
    return static_cast<int>(std::clamp<int64_t>(num_sms / std::max<int64_t>(ctas, 1), 1, std::max(max_pages, 1)));
}

int64_t mla_decode_workspace_floats(const MlaDecodeParams& p, int num_splits) {
    return p.num_seqs * p.num_heads * num_splits * (kMlaLatent + 2);
}

MlaDecodeKernel mla_decode_kernel(const MlaDecodeParams& p) {
    if (p.kernel != MlaDecodeKernel::Auto) {
        return p.kernel;
    }
    static const MlaDecodeKernel from_env = [] {
        const char* env = std::getenv("K2_MLA_DECODE_KERNEL");
        const std::string name = env != nullptr ? env : "";
        K2_CHECK(name.empty() || name == "mma" || name == "wgmma", "K2_MLA_DECODE_KERNEL={} is not one of mma, wgmma",
                 name);
        return name == "mma" ? MlaDecodeKernel::Mma : MlaDecodeKernel::Wgmma;
    }();
    return from_env;
}

namespace {

// The BF16 cache as TMA sees it: [rows, 576] bf16, boxes of [64 tokens, 64 columns] with the 128B swizzle. The
// params carry no block count, so the map's row bound is the largest row a block id can address (only blocks named
// by the block tables are read).
CUtensorMap mla_cache_map(const MlaDecodeParams& p) {
    TmaMap2d spec;
    spec.base = p.cache;
    spec.dtype = CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    spec.element_bytes = 2;
    spec.rows = static_cast<int64_t>(INT_MAX / kMlaPageTokens) * kMlaPageTokens;
    spec.cols = kMlaEntry;
    spec.stride_bytes = kMlaEntry * 2;
    spec.box_rows = kMlaPageTokens;
    spec.box_cols = 64;
    spec.swizzle = CU_TENSOR_MAP_SWIZZLE_128B;
    return make_tma_map_2d(spec, "mla decode");
}

// The wgmma kernel's variant: the defaults, or the environment's (read on every launch, for A/B runs in one process).
detail::MlaWgOptions mla_wg_options(bool bf16_cache) {
    detail::MlaWgOptions options;
    options.l2_ahead = bf16_cache ? detail::kMlaWgL2AheadBf16 : detail::kMlaWgL2AheadFp8;
    if (const char* env = std::getenv("K2_MLA_WG_L2_AHEAD"); env != nullptr && *env != '\0') {
        options.l2_ahead = std::clamp(std::atoi(env), 0, 16);
    }
    // name=value: the variant named; unset or empty: the default.
    const auto pick = [](const char* name, const char* alternative, bool fallback) {
        const char* env = std::getenv(name);
        const std::string value = env != nullptr ? env : "";
        K2_CHECK(value.empty() || value == "v6" || value == alternative, "{}={} is not one of v6, {}", name, value,
                 alternative);
        return value.empty() ? fallback : value == alternative;
    };
    options.fp8_staged = pick("K2_MLA_WG_FP8", "staged", false);
    options.fast_combine = pick("K2_MLA_WG_COMBINE", "v7", true);
    return options;
}

}  // namespace

void launch_mla_decode(const MlaDecodeParams& p, cudaStream_t stream) {
    if (p.num_seqs == 0) {
        return;
    }
    K2_CHECK(p.num_heads > 0 && (p.num_heads < kMlaHeadsPerCta || p.num_heads % kMlaHeadsPerCta == 0),
             "mla decode: num_heads {} must be below {} or a multiple of it", p.num_heads, kMlaHeadsPerCta);
    K2_CHECK(p.max_seq_len >= 1 && p.max_seq_len <= p.max_blocks_per_seq * kMlaPageTokens,
             "mla decode: max_seq_len {} does not fit {} blocks of {} tokens", p.max_seq_len, p.max_blocks_per_seq,
             kMlaPageTokens);
    K2_CHECK((p.cache != nullptr) != (p.cache_fp8 != nullptr), "mla decode: set exactly one of cache and cache_fp8");
    K2_CHECK(p.q != nullptr && p.block_tables != nullptr && p.seq_lens != nullptr && p.workspace != nullptr,
             "mla decode: null pointer");
    K2_CHECK((p.out != nullptr) != (p.out_bf16 != nullptr), "mla decode: set exactly one of out and out_bf16");
    K2_CHECK(p.cache_fp8 == nullptr || (std::isfinite(p.kv_scale) && p.kv_scale > 0.0f),
             "mla decode: kv_scale {} must be a positive finite number", p.kv_scale);
    const void* cache = p.cache != nullptr ? static_cast<const void*>(p.cache) : p.cache_fp8;
    K2_CHECK(reinterpret_cast<uintptr_t>(p.q) % 16 == 0 && reinterpret_cast<uintptr_t>(cache) % 16 == 0 &&
                 reinterpret_cast<uintptr_t>(p.out) % 16 == 0 && reinterpret_cast<uintptr_t>(p.out_bf16) % 8 == 0 &&
                 reinterpret_cast<uintptr_t>(p.workspace) % 16 == 0,
             "mla decode: q, cache, out and workspace must be 16-byte aligned (out_bf16: 8-byte)");
    int device = 0;
    int num_sms = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
    const int num_splits = mla_decode_num_splits(p, num_sms);
    const int max_pages = (p.max_seq_len + kMlaPageTokens - 1) / kMlaPageTokens;
    const int pages_per_split = (max_pages + num_splits - 1) / num_splits;
    if (mla_decode_kernel(p) == MlaDecodeKernel::Mma) {
        K2_CHECK(p.out_bf16 == nullptr, "mla decode: out_bf16 needs the wgmma kernel (K2_MLA_DECODE_KERNEL=mma)");
        CUDA_CHECK(detail::launch_mla_decode_kernels(p, num_splits, pages_per_split, stream));
        return;
    }
    const CUtensorMap cache_map = p.cache != nullptr ? mla_cache_map(p) : CUtensorMap{};
    CUDA_CHECK(detail::launch_mla_decode_wgmma_kernels(p, cache_map, num_splits, pages_per_split,
                                                       mla_wg_options(p.cache != nullptr), stream));
}

}  // namespace k2::cuda

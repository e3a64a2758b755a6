// Host side of moe_gemm_wgmma.h: validation, the launch shape and the weight tensor map (tma_map.h); the raw
// launch is in moe_gemm_wgmma.cu.
#include "backend/cuda/moe_gemm_wgmma.h"

#include <cuda.h>

#include <array>
#include <limits>
#include <mutex>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/moe_gemm_wgmma_detail.h"
#include "backend/cuda/tma_map.h"

namespace k2::cuda {
namespace {

bool aligned16(const void* ptr) {
    return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

void check_params(const Fp8GroupedGemmParams& p, const MoeGemmWgmmaOptions& o) {
    check_grouped_gemm_params(p, detail::kMoeWgmmaMaxExperts, "moe wgmma gemm");
    K2_CHECK(p.num_experts * p.n < std::numeric_limits<int32_t>::max(),
             "moe wgmma gemm: num_experts {} x n {} weight rows overflow the tensor map", p.num_experts, p.n);
    K2_CHECK(p.max_rows_per_expert > 0, "moe wgmma gemm: max_rows_per_expert {} is not positive",
             p.max_rows_per_expert);
    K2_CHECK(o.max_n == 0 || o.max_n == 16 || o.max_n == 32 || o.max_n == 64,
             "moe wgmma gemm: max_n {} is not 16, 32 or 64", o.max_n);
    K2_CHECK(o.grid >= 0, "moe wgmma gemm: grid {} < 0", o.grid);
}

// Up to 16 rows: 16 (the deepest ring); else 32: passes of 64 rows shorten the ring to 6 stages, and at decode
// (random routing, <= 256 tokens of top-8 over 384 experts) an expert rarely gets more than 32 rows.
int max_n_for(int64_t max_rows) {
    return max_rows <= 16 ? 16 : 32;
}

// CTAs of the persistent launch: every SM's worth of what fits at once (cached per instantiation).
int default_grid(int max_n) {
    static std::mutex mutex;
    static std::array<int, 3> cache{};
    const std::lock_guard<std::mutex> lock(mutex);
    int& cached = cache[max_n == 16 ? 0 : max_n == 32 ? 1 : 2];
    if (cached == 0) {
        int device = 0;
        int sms = 0;
        int blocks = 0;
        CUDA_CHECK(cudaGetDevice(&device));
        CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
        CUDA_CHECK(detail::moe_gemm_wgmma_blocks_per_sm(max_n, &blocks));
        K2_CHECK(blocks >= 1, "moe wgmma gemm: no CTA of max_n {} fits on an SM", max_n);
        cached = sms * blocks;
    }
    return cached;
}

// w as a 2-D e4m3 tensor [num_experts * n, k] read in boxes of [64 rows, 128 k] with the 128B swizzle the wgmma
// descriptors expect.
CUtensorMap weight_map(const Fp8GroupedGemmParams& p) {
    TmaMap2d spec;
    spec.base = p.w;
    spec.rows = p.num_experts * p.n;
    spec.cols = p.k;
    spec.stride_bytes = p.k;
    spec.box_rows = detail::kMoeWgmmaRows;
    spec.box_cols = 128;
    return make_tma_map_2d(spec, "moe wgmma gemm");
}

}  // namespace

bool moe_gemm_wgmma_supported(const Fp8GroupedGemmParams& p) {
    return current_device_is_sm90a() && p.num_experts >= 1 && p.num_experts <= detail::kMoeWgmmaMaxExperts && p.n > 0 &&
           p.n % 128 == 0 && p.k > 0 && p.k % 128 == 0 && p.num_experts * p.n < std::numeric_limits<int32_t>::max() &&
           aligned16(p.x) && aligned16(p.w);
}

void launch_fp8_grouped_gemm_wgmma(const Fp8GroupedGemmParams& p, cudaStream_t stream,
                                   const MoeGemmWgmmaOptions& options) {
    if (p.max_rows_per_expert == 0) {
        return;  // no tokens: every expert is empty
    }
    check_params(p, options);
    const int max_n = options.max_n > 0 ? options.max_n : max_n_for(p.max_rows_per_expert);
    const int grid = options.grid > 0 ? options.grid : default_grid(max_n);
    const CUtensorMap tmap_w = weight_map(p);
    CUDA_CHECK(detail::launch_moe_gemm_wgmma_kernel(tmap_w, p, max_n, grid, stream));
}

}  // namespace k2::cuda

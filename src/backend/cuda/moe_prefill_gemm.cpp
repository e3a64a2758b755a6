// Host side of moe_prefill_gemm.h: validation, the grid and the two TMA tensor maps (tma_map.h); the raw launch
// is in moe_prefill_gemm.cu.
#include "backend/cuda/moe_prefill_gemm.h"

#include <cuda.h>

#include <limits>
#include <mutex>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/moe_gemm_wgmma_detail.h"
#include "backend/cuda/moe_prefill_gemm_detail.h"
#include "backend/cuda/tma_map.h"
#include "core/error.h"

namespace k2::cuda {
namespace {

// Defaults from the H200 benchmark (docs/perf/moe-prefill-gemm.md).
constexpr int kDefaultBlockM = 128;
constexpr bool kDefaultExpertMajor = false;
constexpr int64_t kRowsPerExpertFor128 = 96;
// From ~128 rows per expert most experts need two 128-row m tiles, which read their weights twice; the 256 x 128
// tiles read them once (session 8: 1.12x on gate_up, 1.04x on down at ~170 rows; measured only at ~43 and ~170).
constexpr int64_t kRowsPerExpertFor256 = 128;

bool aligned16(const void* ptr) {
    return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

bool aligned4(const void* ptr) {
    return reinterpret_cast<uintptr_t>(ptr) % 4 == 0;
}

void check_params(const Fp8GroupedGemmParams& p, const MoePrefillGemmOptions& o) {
    check_grouped_gemm_params(p, detail::kMoeWgmmaMaxExperts, "moe prefill gemm");
    K2_CHECK(p.num_experts * p.n < std::numeric_limits<int32_t>::max(),
             "moe prefill gemm: num_experts {} x n {} weight rows overflow the tensor map", p.num_experts, p.n);
    K2_CHECK(p.max_rows_per_expert > 0, "moe prefill gemm: max_rows_per_expert {} is not positive",
             p.max_rows_per_expert);
    K2_CHECK(aligned16(p.y), "moe prefill gemm: y must be 16-byte aligned (paired bf16 stores)");
    K2_CHECK(aligned4(p.x_scale) && aligned4(p.w_scale) && aligned4(p.offsets),
             "moe prefill gemm: scales and offsets must be 4-byte aligned");
    K2_CHECK(o.grid >= 0, "moe prefill gemm: grid {} < 0", o.grid);
    K2_CHECK(o.block_m == 0 || o.block_m == 64 || o.block_m == 128 || o.block_m == 192 || o.block_m == 256,
             "moe prefill gemm: block_m {} is not 64, 128, 192 or 256", o.block_m);
    K2_CHECK(o.order >= 0 && o.order <= 2, "moe prefill gemm: order {} is not 0, 1 or 2", o.order);
    K2_CHECK(o.cluster >= 0 && o.cluster <= 2, "moe prefill gemm: cluster {} is not 0, 1 or 2", o.cluster);
}

// As many CTAs as fit at once (one per SM with the ~200 KB ring; whole clusters), cached per instantiation.
int default_grid(int block_m, int cluster) {
    static std::mutex mutex;
    static int cache[7] = {};  // (64, 1), (128 | 192 | 256, 1 | 2)
    const std::lock_guard<std::mutex> lock(mutex);
    int& cached = cache[block_m == 64 ? 0 : 1 + 2 * (block_m / 64 - 2) + (cluster == 2 ? 1 : 0)];
    if (cached == 0) {
        int clusters = 0;
        CUDA_CHECK(detail::moe_prefill_gemm_max_active_clusters(block_m, cluster, &clusters));
        K2_CHECK(clusters >= 1, "moe prefill gemm: no cluster of {} CTAs (block_m {}) fits on the device", cluster,
                 block_m);
        cached = clusters * cluster;
    }
    return cached;
}

// A 2-D e4m3 tensor map [rows, k] read in boxes of [box_rows, 128 k] with the 128B swizzle the wgmma descriptors
// expect; out-of-bounds rows (negative ones of an anchored tail tile) read as zeros.
CUtensorMap e4m3_map(const uint8_t* base, int64_t rows, int64_t k, int box_rows) {
    TmaMap2d spec;
    spec.base = base;
    spec.rows = rows;
    spec.cols = k;
    spec.stride_bytes = k;
    spec.box_rows = box_rows;
    spec.box_cols = 128;
    return make_tma_map_2d(spec, "moe prefill gemm");
}

}  // namespace

MoePrefillGemmOptions moe_prefill_gemm_options(int64_t num_rows, int num_experts) {
    MoePrefillGemmOptions o;
    if (num_experts <= 0) {
        o.block_m = 64;
    } else if (num_rows >= kRowsPerExpertFor256 * num_experts) {
        o.block_m = 256;
    } else {
        o.block_m = num_rows >= kRowsPerExpertFor128 * num_experts ? 128 : 64;
    }
    return o;
}

bool moe_prefill_gemm_supported(const Fp8GroupedGemmParams& p) {
    return current_device_is_sm90a() && p.num_experts >= 1 && p.num_experts <= detail::kMoeWgmmaMaxExperts && p.n > 0 &&
           p.n % 128 == 0 && p.k > 0 && p.k % 128 == 0 && p.num_experts * p.n < std::numeric_limits<int32_t>::max() &&
           aligned16(p.x) && aligned16(p.w) && aligned16(p.y);
}

void launch_fp8_grouped_gemm_prefill_wgmma(const Fp8GroupedGemmParams& p, cudaStream_t stream,
                                           const MoePrefillGemmOptions& options) {
    if (p.num_experts == 0 || p.max_rows_per_expert == 0) {
        return;  // no experts or no tokens
    }
    check_params(p, options);
    const int block_m = options.block_m > 0 ? options.block_m : kDefaultBlockM;
    const bool expert_major = options.order > 0 ? options.order == 2 : kDefaultExpertMajor;
    const int cluster = options.cluster > 0 ? options.cluster : 1;
    K2_CHECK(cluster == 1 || block_m >= 128, "moe prefill gemm: clusters of 2 need block_m 128, 192 or 256 (got {})",
             block_m);
    K2_CHECK(options.grid % cluster == 0, "moe prefill gemm: grid {} is not a multiple of the cluster {}", options.grid,
             cluster);
    const int grid = options.grid > 0 ? options.grid : default_grid(block_m, cluster);
    // x's row count is only known on the device: the map spans kMoePrefillMaxRows rows and the kernel never
    // addresses a row at or past P (tail tiles are anchored at their expert's end).
    const bool boxed =
        block_m >= 192;  // x in 64-row boxes, weight tiles of 128 rows (kernels/moe_prefill_gemm_boxed.cuh)
    const CUtensorMap tmap_x = e4m3_map(p.x, kMoePrefillMaxRows, p.k, boxed ? detail::kMoePrefillBoxRows : block_m);
    const CUtensorMap tmap_w = e4m3_map(p.w, p.num_experts * p.n, p.k,
                                        boxed ? detail::kMoePrefillBoxedBlockN : detail::kMoePrefillBlockN / cluster);
    CUDA_CHECK(detail::launch_moe_prefill_gemm_kernel(tmap_x, tmap_w, p, block_m, cluster, expert_major, grid, stream));
}

}  // namespace k2::cuda

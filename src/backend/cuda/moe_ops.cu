// Raw launches of the MoE data-movement kernels and the grouped FP8 decode GEMM (validation in moe_ops.cpp).
#include <algorithm>
#include <atomic>
#include <type_traits>

#include "backend/cuda/kernels/fp8_grouped_gemm.cuh"
#include "backend/cuda/kernels/moe_ops.cuh"
#include "backend/cuda/moe_ops_detail.h"

namespace k2::cuda::detail {

cudaError_t launch_moe_permute_kernel(const MoePermuteParams& p, cudaStream_t stream) {
    kernels::moe_permute_kernel<<<1, kernels::kPermuteThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

cudaError_t launch_moe_gather_kernel(const MoeGatherParams& p, cudaStream_t stream) {
    kernels::moe_gather_kernel<<<static_cast<unsigned>(p.num_rows), kernels::kGatherThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

namespace {

// kMaxTiles for max_tiles in {1, 2, 4, 8} (four instantiations only: CI compiles this on 2 cores).
template <class Launch>
cudaError_t dispatch_max_tiles(int max_tiles, Launch&& launch) {
    if (max_tiles <= 1) {
        return launch(std::integral_constant<int, 1>{});
    }
    if (max_tiles <= 2) {
        return launch(std::integral_constant<int, 2>{});
    }
    if (max_tiles <= 4) {
        return launch(std::integral_constant<int, 4>{});
    }
    return launch(std::integral_constant<int, 8>{});
}

// Blocks of `kernel` resident at once on the current device (cached per device: the multi-rank tests drive several).
template <auto kKernel>
cudaError_t resident_blocks(int& blocks) {
    static std::atomic<int> cached[64] = {};
    int device = 0;
    if (const cudaError_t status = cudaGetDevice(&device); status != cudaSuccess) {
        return status;
    }
    if (device < 64 && (blocks = cached[device].load(std::memory_order_relaxed)) > 0) {
        return cudaSuccess;
    }
    int per_sm = 0;
    int sms = 0;
    cudaError_t status = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kKernel, kernels::kDecodeThreads, 0);
    if (status == cudaSuccess) {
        status = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    }
    blocks = std::max(1, per_sm) * std::max(1, sms);
    if (status == cudaSuccess && device < 64) {
        cached[device].store(blocks, std::memory_order_relaxed);
    }
    return status;
}

}  // namespace

cudaError_t launch_fp8_grouped_gemm_decode_kernel(const Fp8GroupedGemmParams& p, int max_tiles, cudaStream_t stream) {
    static_assert(kernels::kDecodeRowsPerBlock == 64);
    const dim3 grid(static_cast<unsigned>(p.n / kernels::kDecodeRowsPerBlock), static_cast<unsigned>(p.num_experts), 1);
    return dispatch_max_tiles(max_tiles, [&](auto tiles) {
        kernels::fp8_grouped_gemm_decode_kernel<decltype(tiles)::value>
            <<<grid, kernels::kDecodeThreads, 0, stream>>>(p);
        return cudaGetLastError();
    });
}

cudaError_t launch_fp8_grouped_gemm_decode_persistent(const Fp8GroupedGemmParams& p, int max_tiles, int l2_ahead,
                                                      cudaStream_t stream) {
    return dispatch_max_tiles(max_tiles, [&](auto tiles) {
        constexpr int kTiles = decltype(tiles)::value;
        constexpr auto kKernel = kernels::fp8_grouped_gemm_decode_persistent_kernel<kTiles>;
        int blocks = 0;
        if (const cudaError_t status = resident_blocks<kKernel>(blocks); status != cudaSuccess) {
            return status;
        }
        if constexpr (kTiles <= 2) {
            const int64_t touched =
                p.max_touched_experts > 0 ? std::min<int64_t>(p.max_touched_experts, p.num_experts) : p.num_experts;
            const int64_t slices = touched * (p.n / kernels::kDecodeRowsPerWarp);
            // Auto (kernels.md "Session 7"): up to 8 rows per expert the split measured 1.0-1.26x faster on both
            // Kimi-K2 expert GEMMs; at 9-16 rows only where the slices are few.
            const bool few_slices = slices < 4 * kernels::kDecodeWarps * blocks;
            if (p.decode_k_split == 4 || (p.decode_k_split == 0 && (kTiles == 1 || few_slices))) {
                constexpr auto kSplit = kernels::fp8_grouped_gemm_decode_split_kernel<kTiles>;
                if (const cudaError_t status = resident_blocks<kSplit>(blocks); status != cudaSuccess) {
                    return status;
                }
                kSplit<<<static_cast<unsigned>(blocks), kernels::kDecodeThreads, 0, stream>>>(p, l2_ahead);
                return cudaGetLastError();
            }
        }
        kKernel<<<static_cast<unsigned>(blocks), kernels::kDecodeThreads, 0, stream>>>(p, l2_ahead);
        return cudaGetLastError();
    });
}

cudaError_t launch_moe_combine_kernel(const MoeCombineParams& p, cudaStream_t stream) {
    const bool few = p.num_tokens <= kernels::kCombineFewTokens;  // decode: the batched-load kernel
    const int64_t threads = few ? kernels::kCombineThreads : kernels::kCombineSerialThreads;
    const int64_t cols_per_block = threads * kernels::kCombineVec;
    const auto col_blocks = static_cast<unsigned>((p.hidden + cols_per_block - 1) / cols_per_block);
    const dim3 grid(static_cast<unsigned>(p.num_tokens), col_blocks, 1);
    if (few) {
        kernels::moe_combine_kernel<<<grid, kernels::kCombineThreads, 0, stream>>>(p);
    } else {
        kernels::moe_combine_serial_kernel<<<grid, kernels::kCombineSerialThreads, 0, stream>>>(p);
    }
    return cudaGetLastError();
}

cudaError_t launch_moe_ep_drop_padding_kernel(const MoeEpDropParams& p, cudaStream_t stream) {
    const int64_t pairs = int64_t{p.dp} * p.tp * p.slice_rows * p.top_k;
    const auto blocks = static_cast<unsigned>((pairs + kernels::kEpDropThreads - 1) / kernels::kEpDropThreads);
    kernels::moe_ep_drop_padding_kernel<<<blocks, kernels::kEpDropThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace k2::cuda::detail

// Raw launches of the wgmma MLA decode kernels (mla_decode_wgmma_detail.h).
#include "backend/cuda/kernels/mla_decode_wgmma.cuh"
#include "backend/cuda/kernels/mla_decode_wgmma_fp8_staged.cuh"
#include "backend/cuda/launch_detail.h"
#include "backend/cuda/mla_decode_wgmma_detail.h"
#include "backend/cuda/smem_limit.h"

namespace k2::cuda::detail {

namespace {

// Up to 2 splits run as one thread-block cluster per (sequence, head group) and combine in the kernel (no partials,
// no combine kernel: batch 64 x 4096, 2 splits: 99.4 µs against 101.6). Larger clusters lost: 8 splits at batch 16
// took 104 µs against 58 µs, as clusters of 8 CTAs with ~225 KB of shared memory each did not all fit at once
// (docs/perf/mla-decode-wgmma.md).
constexpr int kMaxClusterSplits = 2;

// Launches kKernel (one of the split kernels) on [num_splits, num_seqs, head groups]; as clusters of num_splits
// CTAs along x when kCluster.
template <bool kCluster, auto kKernel, typename... Args>
cudaError_t launch_split(const MlaDecodeParams& p, int num_splits, cudaStream_t stream, Args... args) {
    const cudaError_t attribute_status = allow_dynamic_smem<kKernel>(kernels::kMlaWgSmemBytes);
    if (attribute_status != cudaSuccess) {
        return attribute_status;
    }
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(static_cast<unsigned>(num_splits), static_cast<unsigned>(p.num_seqs),
                          static_cast<unsigned>(mla_decode_head_groups(p.num_heads)));
    config.blockDim = dim3(kernels::kMlaWgThreads, 1, 1);
    config.dynamicSmemBytes = kernels::kMlaWgSmemBytes;
    config.stream = stream;
    cudaLaunchAttribute attribute = {};
    if constexpr (kCluster) {
        attribute.id = cudaLaunchAttributeClusterDimension;
        attribute.val.clusterDim.x = static_cast<unsigned>(num_splits);
        attribute.val.clusterDim.y = 1;
        attribute.val.clusterDim.z = 1;
        config.attrs = &attribute;
        config.numAttrs = 1;
    }
    return cudaLaunchKernelEx(&config, kKernel, args...);
}

// The combine kernel of this header as a programmatic dependent of the split kernel (which triggers it early).
cudaError_t launch_combine(const MlaDecodeParams& p, int num_splits, cudaStream_t stream) {
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(static_cast<unsigned>(p.num_seqs * p.num_heads), 1, 1);
    config.blockDim = dim3(128, 1, 1);
    config.stream = stream;
    cudaLaunchAttribute attribute = {};
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = 1;
    config.attrs = &attribute;
    config.numAttrs = 1;
    return cudaLaunchKernelEx(&config, kernels::mla_decode_wgmma_combine_kernel, p, num_splits);
}

template <bool kCluster>
cudaError_t launch_fp8(const MlaDecodeParams& p, int num_splits, int pages_per_split, const MlaWgOptions& o,
                       cudaStream_t stream) {
    return o.fp8_staged ? launch_split<kCluster, kernels::mla_decode_wgmma_fp8_staged_kernel<kCluster>>(
                              p, num_splits, stream, p, num_splits, pages_per_split)
                        : launch_split<kCluster, kernels::mla_decode_wgmma_fp8_kernel<kCluster>>(
                              p, num_splits, stream, p, num_splits, pages_per_split, o.l2_ahead);
}

}  // namespace

cudaError_t launch_mla_decode_wgmma_kernels(const MlaDecodeParams& p, const CUtensorMap& cache_map, int num_splits,
                                            int pages_per_split, const MlaWgOptions& options, cudaStream_t stream) {
    const bool cluster = num_splits <= kMaxClusterSplits;
    cudaError_t status = cudaSuccess;
    if (p.cache_fp8 != nullptr) {
        status = cluster ? launch_fp8<true>(p, num_splits, pages_per_split, options, stream)
                         : launch_fp8<false>(p, num_splits, pages_per_split, options, stream);
    } else {
        status = cluster ? launch_split<true, kernels::mla_decode_wgmma_bf16_kernel<true>>(
                               p, num_splits, stream, cache_map, p, num_splits, pages_per_split, options.l2_ahead)
                         : launch_split<false, kernels::mla_decode_wgmma_bf16_kernel<false>>(
                               p, num_splits, stream, cache_map, p, num_splits, pages_per_split, options.l2_ahead);
    }
    if (status != cudaSuccess || cluster) {
        return status;
    }
    if (options.fast_combine || p.out_bf16 != nullptr) {
        return launch_combine(p, num_splits, stream);
    }
    return launch_mla_decode_combine_kernel(p, num_splits, stream);
}

}  // namespace k2::cuda::detail

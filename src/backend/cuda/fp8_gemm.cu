// Raw cluster launch of the decode GEMM kernel (validation and split choice are in fp8_gemm.cpp).
#include "backend/cuda/kernels/fp8_gemm_decode.cuh"
#include "backend/cuda/launch_detail.h"

namespace k2::cuda::detail {
namespace {

template <int kTiles>
cudaError_t launch_pass(const Fp8GemmParams& p, int splits, int kb_per_split, cudaStream_t stream) {
    // Deeper weight prefetch where the accumulators leave registers for it.
    constexpr int kStages = kTiles >= 8 ? 2 : 4;
    static_assert(kernels::kDecodeRowsPerBlock == kDecodeRowsPerBlock);
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(static_cast<unsigned>((p.n + kDecodeRowsPerBlock - 1) / kDecodeRowsPerBlock),
                          static_cast<unsigned>(splits), 1);
    config.blockDim = dim3(kernels::kDecodeThreads, 1, 1);
    config.stream = stream;
    cudaLaunchAttribute attribute = {};
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim.x = 1;
    attribute.val.clusterDim.y = static_cast<unsigned>(splits);
    attribute.val.clusterDim.z = 1;
    config.attrs = &attribute;
    config.numAttrs = 1;
    return cudaLaunchKernelEx(&config, kernels::fp8_gemm_decode_kernel<kTiles, kStages>, p, kb_per_split);
}

}  // namespace

cudaError_t launch_fp8_gemm_decode_kernel(const Fp8GemmParams& p, int splits, int kb_per_split, cudaStream_t stream) {
    const int64_t tiles = (p.num_tokens + 7) / 8;
    // NOTE: four instantiations only (CI compiles this on 2 cores).
    if (tiles <= 1) {
        return launch_pass<1>(p, splits, kb_per_split, stream);
    }
    if (tiles <= 2) {
        return launch_pass<2>(p, splits, kb_per_split, stream);
    }
    if (tiles <= 4) {
        return launch_pass<4>(p, splits, kb_per_split, stream);
    }
    return launch_pass<8>(p, splits, kb_per_split, stream);
}

}  // namespace k2::cuda::detail

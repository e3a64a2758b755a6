// Raw cluster launches of the TMA + wgmma decode GEMM (tensor maps, validation and the split choice are in
// fp8_gemm_wgmma.cpp).
#include "backend/cuda/fp8_gemm_wgmma_detail.h"
#include "backend/cuda/kernels/fp8_gemm_wgmma.cuh"
#include "backend/cuda/smem_limit.h"

namespace k2::cuda::detail {
namespace {

template <int kN, int kConsumers>
cudaLaunchConfig_t make_config(int64_t n, int splits, cudaStream_t stream, cudaLaunchAttribute* attribute) {
    using L = kernels::WgmmaLayout<kN, kConsumers>;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(static_cast<unsigned>((n + L::kRows - 1) / L::kRows), static_cast<unsigned>(splits), 1);
    config.blockDim = dim3(L::kThreads, 1, 1);
    config.dynamicSmemBytes = L::kSmemBytes;
    config.stream = stream;
    attribute->id = cudaLaunchAttributeClusterDimension;
    attribute->val.clusterDim.x = 1;
    attribute->val.clusterDim.y = static_cast<unsigned>(splits);
    attribute->val.clusterDim.z = 1;
    config.attrs = attribute;
    config.numAttrs = 1;
    return config;
}

// Calls f.template operator()<kN, kConsumers>() for the variant (8 instantiations).
template <typename F>
cudaError_t dispatch(const WgmmaVariant& v, F&& f) {
    auto by_rows = [&]<int kN>() {
        if (v.rows == 64)
            return f.template operator()<kN, 1>();
        if (v.rows == 128)
            return f.template operator()<kN, 2>();
        return cudaErrorInvalidValue;
    };
    switch (v.tokens_tile) {
        case 16:
            return by_rows.template operator()<16>();
        case 32:
            return by_rows.template operator()<32>();
        case 64:
            return by_rows.template operator()<64>();
        case 128:
            return by_rows.template operator()<128>();
        default:
            return cudaErrorInvalidValue;
    }
}

}  // namespace

cudaError_t launch_fp8_gemm_wgmma_kernel(const CUtensorMap& tmap_w, const CUtensorMap& tmap_x, const Fp8GemmParams& p,
                                         const WgmmaVariant& variant, int splits, int kb_per_split,
                                         cudaStream_t stream) {
    return dispatch(variant, [&]<int kN, int kConsumers>() {
        if (const cudaError_t status = allow_dynamic_smem<kernels::fp8_gemm_wgmma_kernel<kN, kConsumers>>(
                kernels::WgmmaLayout<kN, kConsumers>::kSmemBytes);
            status != cudaSuccess) {
            return status;
        }
        cudaLaunchAttribute attribute = {};
        const cudaLaunchConfig_t config = make_config<kN, kConsumers>(p.n, splits, stream, &attribute);
        return cudaLaunchKernelEx(&config, kernels::fp8_gemm_wgmma_kernel<kN, kConsumers>, tmap_w, tmap_x, p,
                                  kb_per_split);
    });
}

cudaError_t fp8_gemm_wgmma_max_active_clusters(const WgmmaVariant& variant, int splits, int* num_clusters) {
    return dispatch(variant, [&]<int kN, int kConsumers>() {
        if (const cudaError_t status = allow_dynamic_smem<kernels::fp8_gemm_wgmma_kernel<kN, kConsumers>>(
                kernels::WgmmaLayout<kN, kConsumers>::kSmemBytes);
            status != cudaSuccess) {
            return status;
        }
        cudaLaunchAttribute attribute = {};
        const int64_t n = static_cast<int64_t>(kernels::WgmmaLayout<kN, kConsumers>::kRows) * splits;
        const cudaLaunchConfig_t config = make_config<kN, kConsumers>(n, splits, nullptr, &attribute);
        return cudaOccupancyMaxActiveClusters(num_clusters, kernels::fp8_gemm_wgmma_kernel<kN, kConsumers>, &config);
    });
}

}  // namespace k2::cuda::detail

// Raw launch of the grouped FP8 GEMM of MoE prefill (kernels/moe_prefill_gemm.cuh); validation and the tensor
// maps are in moe_prefill_gemm.cpp.
#include "backend/cuda/kernels/moe_prefill_gemm.cuh"
#include "backend/cuda/kernels/moe_prefill_gemm_boxed.cuh"
#include "backend/cuda/moe_prefill_gemm_detail.h"
#include "backend/cuda/smem_limit.h"

namespace k2::cuda::detail {
namespace {

template <int kBlockM, int kCluster>
cudaLaunchConfig_t make_config(int grid, cudaStream_t stream, cudaLaunchAttribute* attribute) {
    using L = kernels::MoePrefillLayout<kBlockM>;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(static_cast<unsigned>(grid), 1, 1);
    config.blockDim = dim3(L::kThreads, 1, 1);
    config.dynamicSmemBytes = L::kSmemBytes;
    config.stream = stream;
    attribute->id = cudaLaunchAttributeClusterDimension;
    attribute->val.clusterDim.x = static_cast<unsigned>(kCluster);
    attribute->val.clusterDim.y = 1;
    attribute->val.clusterDim.z = 1;
    config.attrs = attribute;
    config.numAttrs = 1;
    return config;
}

// Calls f.template operator()<kBlockM, kCluster>() for (64, 1), (128, 1), (128, 2), (192 | 256, 1 | 2).
template <typename F>
cudaError_t dispatch(int block_m, int cluster, F&& f) {
    if (block_m == 64 && cluster == 1)
        return f.template operator()<64, 1>();
    if (block_m == 128 && cluster == 1)
        return f.template operator()<128, 1>();
    if (block_m == 128 && cluster == 2)
        return f.template operator()<128, 2>();
    if (block_m == 192 && cluster == 1)
        return f.template operator()<192, 1>();
    if (block_m == 192 && cluster == 2)
        return f.template operator()<192, 2>();
    if (block_m == 256 && cluster == 1)
        return f.template operator()<256, 1>();
    if (block_m == 256 && cluster == 2)
        return f.template operator()<256, 2>();
    return cudaErrorInvalidValue;
}

// The kernel of one instantiation (all share moe_prefill_gemm_kernel's parameters).
template <int kBlockM, int kCluster>
constexpr auto prefill_kernel() {
    if constexpr (kBlockM >= 192) {
        return &kernels::moe_prefill_gemm_boxed_kernel<kBlockM, kCluster>;
    } else {
        return &kernels::moe_prefill_gemm_kernel<kBlockM, kCluster>;
    }
}

}  // namespace

cudaError_t launch_moe_prefill_gemm_kernel(const CUtensorMap& tmap_x, const CUtensorMap& tmap_w,
                                           const Fp8GroupedGemmParams& p, int block_m, int cluster, bool expert_major,
                                           int grid, cudaStream_t stream) {
    return dispatch(block_m, cluster, [&]<int kBlockM, int kCluster>() {
        if (const cudaError_t status =
                allow_dynamic_smem<prefill_kernel<kBlockM, kCluster>()>(kernels::MoePrefillLayout<kBlockM>::kSmemBytes);
            status != cudaSuccess) {
            return status;
        }
        cudaLaunchAttribute attribute = {};
        const cudaLaunchConfig_t config = make_config<kBlockM, kCluster>(grid, stream, &attribute);
        return cudaLaunchKernelEx(&config, prefill_kernel<kBlockM, kCluster>(), tmap_x, tmap_w, p,
                                  expert_major ? 1 : 0);
    });
}

cudaError_t moe_prefill_gemm_max_active_clusters(int block_m, int cluster, int* clusters) {
    return dispatch(block_m, cluster, [&]<int kBlockM, int kCluster>() {
        if (const cudaError_t status =
                allow_dynamic_smem<prefill_kernel<kBlockM, kCluster>()>(kernels::MoePrefillLayout<kBlockM>::kSmemBytes);
            status != cudaSuccess) {
            return status;
        }
        cudaLaunchAttribute attribute = {};
        const cudaLaunchConfig_t config = make_config<kBlockM, kCluster>(kCluster * 132, nullptr, &attribute);
        return cudaOccupancyMaxActiveClusters(clusters, prefill_kernel<kBlockM, kCluster>(), &config);
    });
}

}  // namespace k2::cuda::detail

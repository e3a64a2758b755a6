// Raw cluster launches of the TMA + wgmma decode GEMM (tensor maps, validation and the split choice are in
// fp8_gemm_wgmma.cpp).
#include "backend/cuda/fp8_gemm_wgmma_detail.h"
#include "backend/cuda/kernels/fp8_gemm_wgmma.cuh"
#include "backend/cuda/smem_limit.h"

namespace k2::cuda::detail {
namespace {

// Grid [ceil(n / rows) rounded up to kMcast, splits], cluster [kMcast, splits]. attributes: [2]; the second
// (programmatic stream serialization) is used where pdl.
template <int kN, int kConsumers, int kMcast>
cudaLaunchConfig_t make_config(int64_t n, int splits, bool pdl, cudaStream_t stream, cudaLaunchAttribute* attribute) {
    using L = kernels::WgmmaLayout<kN, kConsumers>;
    const int64_t tiles = (n + L::kRows - 1) / L::kRows;
    cudaLaunchConfig_t config = {};
    config.gridDim =
        dim3(static_cast<unsigned>((tiles + kMcast - 1) / kMcast * kMcast), static_cast<unsigned>(splits), 1);
    config.blockDim = dim3(L::kThreads, 1, 1);
    config.dynamicSmemBytes = L::kSmemBytes;
    config.stream = stream;
    attribute->id = cudaLaunchAttributeClusterDimension;
    attribute->val.clusterDim.x = kMcast;
    attribute->val.clusterDim.y = static_cast<unsigned>(splits);
    attribute->val.clusterDim.z = 1;
    attribute[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[1].val.programmaticStreamSerializationAllowed = 1;
    config.attrs = attribute;
    config.numAttrs = pdl ? 2 : 1;
    return config;
}

// Calls f.template operator()<kN, kConsumers, kMcast>() for the variant (8 instantiations without multicast, and
// multicast 2 / 4 for 128-row CTAs at 64 and 128 tokens: 4 more).
template <typename F>
cudaError_t dispatch(const WgmmaVariant& v, F&& f) {
    auto by_rows = [&]<int kN>() {
        if (v.rows == 64 && v.mcast == 1)
            return f.template operator()<kN, 1, 1>();
        if (v.rows == 128) {
            if (v.mcast == 1)
                return f.template operator()<kN, 2, 1>();
            if constexpr (kN >= 64) {
                if (v.mcast == 2)
                    return f.template operator()<kN, 2, 2>();
                if (v.mcast == 4)
                    return f.template operator()<kN, 2, 4>();
            }
        }
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
                                         const WgmmaVariant& variant, int splits, int kb_per_split, int l2_ahead,
                                         int pdl, cudaStream_t stream) {
    return dispatch(variant, [&]<int kN, int kConsumers, int kMcast>() {
        constexpr auto kKernel = kernels::fp8_gemm_wgmma_kernel<kN, kConsumers, kMcast>;
        if (const cudaError_t status = allow_dynamic_smem<kKernel>(kernels::WgmmaLayout<kN, kConsumers>::kSmemBytes);
            status != cudaSuccess) {
            return status;
        }
        cudaLaunchAttribute attributes[2] = {};
        const cudaLaunchConfig_t config =
            make_config<kN, kConsumers, kMcast>(p.n, splits, pdl == 1, stream, attributes);
        return cudaLaunchKernelEx(&config, kKernel, tmap_w, tmap_x, p, kb_per_split, l2_ahead, pdl);
    });
}

cudaError_t fp8_gemm_wgmma_max_active_clusters(const WgmmaVariant& variant, int splits, int* num_clusters) {
    return dispatch(variant, [&]<int kN, int kConsumers, int kMcast>() {
        constexpr auto kKernel = kernels::fp8_gemm_wgmma_kernel<kN, kConsumers, kMcast>;
        if (const cudaError_t status = allow_dynamic_smem<kKernel>(kernels::WgmmaLayout<kN, kConsumers>::kSmemBytes);
            status != cudaSuccess) {
            return status;
        }
        cudaLaunchAttribute attributes[2] = {};
        const int64_t n = static_cast<int64_t>(kernels::WgmmaLayout<kN, kConsumers>::kRows) * kMcast * splits;
        const cudaLaunchConfig_t config = make_config<kN, kConsumers, kMcast>(n, splits, false, nullptr, attributes);
        return cudaOccupancyMaxActiveClusters(num_clusters, kKernel, &config);
    });
}

}  // namespace k2::cuda::detail

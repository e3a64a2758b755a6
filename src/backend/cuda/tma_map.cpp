#include "backend/cuda/tma_map.h"

#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include "backend/cuda/cuda_check.h"
#include "core/error.h"

namespace k2::cuda {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
    static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
        void* ptr = nullptr;
        cudaDriverEntryPointQueryResult query = cudaDriverEntryPointSymbolNotFound;
        CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &query));
        K2_CHECK(query == cudaDriverEntryPointSuccess && ptr != nullptr,
                 "the CUDA driver has no cuTensorMapEncodeTiled (query result {})", static_cast<int>(query));
        return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
    }();
    return fn;
}

}  // namespace

CUtensorMap make_tma_map_2d(const TmaMap2d& spec, const char* op) {
    K2_CHECK(spec.base != nullptr && spec.rows > 0 && spec.cols > 0 && spec.box_rows > 0 && spec.box_cols > 0,
             "{}: empty tensor map [{}, {}] box [{}, {}]", op, spec.rows, spec.cols, spec.box_rows, spec.box_cols);
    CUtensorMap map{};
    const cuuint64_t dims[2] = {static_cast<cuuint64_t>(spec.cols), static_cast<cuuint64_t>(spec.rows)};
    const cuuint64_t strides[1] = {static_cast<cuuint64_t>(spec.stride_bytes)};
    const cuuint32_t box[2] = {static_cast<cuuint32_t>(spec.box_cols), static_cast<cuuint32_t>(spec.box_rows)};
    const cuuint32_t element_strides[2] = {1, 1};
    const CUresult status = encode_tiled()(&map, spec.dtype, 2, const_cast<void*>(spec.base), dims, strides, box,
                                           element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, spec.swizzle,
                                           CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    K2_CHECK(status == CUDA_SUCCESS,
             "{}: cuTensorMapEncodeTiled failed ({}) for [{}, {}] x {} B elements, stride {} B, box [{}, {}]", op,
             static_cast<int>(status), spec.rows, spec.cols, spec.element_bytes, spec.stride_bytes, spec.box_rows,
             spec.box_cols);
    return map;
}

}  // namespace k2::cuda

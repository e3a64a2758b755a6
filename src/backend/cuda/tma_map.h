// Host side of the TMA loads of the Hopper kernels: 2-D tensor maps (cuTensorMapEncodeTiled through the runtime's
// driver entry point, so that nothing links libcuda directly).
#pragma once

#include <cuda.h>

#include <cstdint>

namespace k2::cuda {

// A row-major 2-D tensor [rows, cols] of `element_bytes`-byte elements, row stride `stride_bytes`, read in boxes of
// [box_rows, box_cols]; out-of-bounds elements read as zeros.
struct TmaMap2d {
    const void* base = nullptr;
    CUtensorMapDataType dtype = CU_TENSOR_MAP_DATA_TYPE_UINT8;
    int element_bytes = 1;
    int64_t rows = 0;
    int64_t cols = 0;
    int64_t stride_bytes = 0;
    int box_rows = 0;
    int box_cols = 0;
    CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_128B;
};

// Encodes `spec`; errors name `op` (the kernel asking) and the tensor's shape.
CUtensorMap make_tma_map_2d(const TmaMap2d& spec, const char* op);

}  // namespace k2::cuda

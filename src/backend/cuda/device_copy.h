// A plain vectorized device-to-device copy on the SMs: the "HBM copy rate" every kernel is measured against
// (cudaMemcpyAsync captured in a graph runs on the copy engines and reached only ~2.7 TB/s on the H200 here).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace k2::cuda {

struct DeviceCopyParams {
    const void* src = nullptr;  // [num_bytes], 16-byte aligned
    void* dst = nullptr;        // [num_bytes], 16-byte aligned
    int64_t num_bytes = 0;      // multiple of 16
};

void launch_device_copy(const DeviceCopyParams& params, cudaStream_t stream);

}  // namespace k2::cuda

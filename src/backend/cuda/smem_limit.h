// Opting a kernel into more than 48 KB of dynamic shared memory, once per device and kernel: the attribute belongs to
// the function on the current device, so a process that drives several GPUs (the multi-rank tests) must set it on
// each. For the raw-launch .cu files; thread-safe (a race only sets the attribute twice).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

namespace k2::cuda::detail {

template <auto kKernel>
cudaError_t allow_dynamic_smem(int bytes) {
    static std::atomic<uint64_t> done_mask{0};  // bit d: set on device d
    int device = 0;
    if (const cudaError_t status = cudaGetDevice(&device); status != cudaSuccess) {
        return status;
    }
    const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
    if (bit != 0 && (done_mask.load(std::memory_order_relaxed) & bit) != 0) {
        return cudaSuccess;
    }
    const cudaError_t status = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (status == cudaSuccess) {
        done_mask.fetch_or(bit, std::memory_order_relaxed);
    }
    return status;
}

}  // namespace k2::cuda::detail

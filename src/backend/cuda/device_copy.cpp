#include "backend/cuda/device_copy.h"

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/launch_detail.h"

namespace k2::cuda {

int cuda_device_count() {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no driver" error
        return 0;
    }
    return count;
}

bool current_device_is_sm90a() {
    static const bool sm90a = [] {
        int device = 0;
        int major = 0;
        int minor = 0;
        if (cudaGetDevice(&device) != cudaSuccess ||
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
            cudaGetLastError();
            return false;
        }
        return major == 9 && minor == 0;
    }();
    return sm90a;
}

void launch_device_copy(const DeviceCopyParams& p, cudaStream_t stream) {
    if (p.num_bytes == 0) {
        return;
    }
    K2_CHECK(p.num_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(p.src) % 16 == 0 &&
                 reinterpret_cast<uintptr_t>(p.dst) % 16 == 0,
             "device copy: {} bytes must be 16-byte aligned in size and address", p.num_bytes);
    int device = 0;
    int num_sms = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
    CUDA_CHECK(detail::launch_device_copy_kernel(p, num_sms, stream));
}

}  // namespace k2::cuda

// Small CUDA helpers for the forked-rank GPU tests and the all-reduce benchmark (test_nccl, test_p2p_allreduce,
// bench_p2p_allreduce): the device count asked in a throwaway child, and an owning device array.
#pragma once

#include <cuda_runtime_api.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "core/error.h"

namespace k2::dist::testing {

// Asks a throwaway child so the calling process never initializes CUDA before forking ranks.
inline int cuda_device_count_in_child() {
    const pid_t pid = fork();
    if (pid == 0) {
        int count = 0;
        if (cudaGetDeviceCount(&count) != cudaSuccess) {
            count = 0;
        }
        _exit(std::min(count, 100));
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 0;
}

#define K2_TEST_CUDA(expr)                                                                                   \
    do {                                                                                                     \
        const cudaError_t k2_test_result = (expr);                                                           \
        K2_CHECK(k2_test_result == cudaSuccess, "{} failed: {}", #expr, cudaGetErrorString(k2_test_result)); \
    } while (0)

// Owns `size` elements of T on the current device.
template <typename T>
class DeviceArray {
public:
    explicit DeviceArray(size_t size) : m_size(size) {
        K2_TEST_CUDA(cudaMalloc(reinterpret_cast<void**>(&m_ptr), std::max<size_t>(1, size) * sizeof(T)));
    }
    ~DeviceArray() { cudaFree(m_ptr); }
    DeviceArray(const DeviceArray&) = delete;
    DeviceArray& operator=(const DeviceArray&) = delete;

    T* get() const { return m_ptr; }
    size_t size() const { return m_size; }
    void upload(const std::vector<T>& host) {
        K2_CHECK(host.size() <= m_size, "upload of {} elements into {}", host.size(), m_size);
        K2_TEST_CUDA(cudaMemcpy(m_ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
        // A pageable upload may still be in flight when cudaMemcpy returns; kernels on other streams follow.
        K2_TEST_CUDA(cudaDeviceSynchronize());
    }
    std::vector<T> download(size_t offset, size_t count) const {
        std::vector<T> host(count);
        K2_TEST_CUDA(cudaMemcpy(host.data(), m_ptr + offset, count * sizeof(T), cudaMemcpyDeviceToHost));
        return host;
    }

private:
    T* m_ptr = nullptr;
    size_t m_size;
};

}  // namespace k2::dist::testing

// DeviceBuffer: an owning, move-only cudaMalloc allocation. Plain device memory (never managed memory).
#pragma once

#include <cstddef>
#include <utility>

#include "backend/cuda/cuda_check.h"

namespace k2::cuda {

class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(size_t num_bytes) : m_num_bytes(num_bytes) {
        if (num_bytes > 0) {
            CUDA_CHECK(cudaMalloc(&m_data, num_bytes));
        }
    }
    ~DeviceBuffer() {
        if (m_data != nullptr) {
            cudaFree(m_data);  // NOTE: no throw from a destructor; a failed free is reported by the next call
        }
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    DeviceBuffer(DeviceBuffer&& other) noexcept
        : m_data(std::exchange(other.m_data, nullptr)), m_num_bytes(std::exchange(other.m_num_bytes, 0)) {}
    DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
        std::swap(m_data, other.m_data);
        std::swap(m_num_bytes, other.m_num_bytes);
        return *this;
    }

    void* data() const { return m_data; }
    template <typename T>
    T* as() const {
        return static_cast<T*>(m_data);
    }
    size_t num_bytes() const { return m_num_bytes; }

    void upload(const void* host, size_t num_bytes, size_t offset = 0) {
        K2_CHECK(offset + num_bytes <= m_num_bytes, "upload of {} bytes at {} overflows a {}-byte buffer", num_bytes,
                 offset, m_num_bytes);
        CUDA_CHECK(cudaMemcpy(static_cast<char*>(m_data) + offset, host, num_bytes, cudaMemcpyHostToDevice));
    }
    void download(void* host, size_t num_bytes, size_t offset = 0) const {
        K2_CHECK(offset + num_bytes <= m_num_bytes, "download of {} bytes at {} overflows a {}-byte buffer", num_bytes,
                 offset, m_num_bytes);
        CUDA_CHECK(cudaMemcpy(host, static_cast<const char*>(m_data) + offset, num_bytes, cudaMemcpyDeviceToHost));
    }
    // Fills every byte with `value` (0xFF makes bf16/f32 NaN and e4m3 NaN: the poison of the op tests).
    void fill_bytes(int value) {
        if (m_num_bytes > 0) {
            CUDA_CHECK(cudaMemset(m_data, value, m_num_bytes));
        }
    }

private:
    void* m_data = nullptr;
    size_t m_num_bytes = 0;
};

// Number of CUDA devices, 0 when there is no driver or no GPU (CI); never throws. (Defined in device_copy.cpp.)
int cuda_device_count();

// Whether the current device runs sm_90a code (wgmma, TMA: compute capability 9.0); false without a GPU. Queried once.
bool current_device_is_sm90a();

}  // namespace k2::cuda

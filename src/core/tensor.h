// Tensor: a typed, shaped, row-major (outermost dimension first, PyTorch order) view over bytes
// that may share ownership of its storage. Host memory by default; backends that own device
// memory hand out Tensors with Device::CUDA whose data pointer is a device pointer.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace k2 {

enum class Device : uint8_t { CPU, CUDA };

class Tensor {
public:
    Tensor() = default;

    // A new zero-filled host tensor.
    static Tensor zeros(DType dtype, std::vector<int64_t> shape);
    // A non-owning view; the caller keeps `data` alive (e.g. an mmap'ed checkpoint) via `keep_alive`.
    static Tensor view(DType dtype, std::vector<int64_t> shape, void* data,
                       std::shared_ptr<const void> keep_alive = nullptr, Device device = Device::CPU);

    DType dtype() const { return m_dtype; }
    Device device() const { return m_device; }
    const std::vector<int64_t>& shape() const { return m_shape; }
    int64_t dim(int idx) const;  // negative idx counts from the end
    int rank() const { return static_cast<int>(m_shape.size()); }
    int64_t numel() const;
    size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(m_dtype); }
    bool defined() const { return m_data != nullptr || numel() == 0; }

    void* data() { return m_data; }
    const void* data() const { return m_data; }
    template <typename T>
    T* data_as() { return static_cast<T*>(m_data); }
    template <typename T>
    const T* data_as() const { return static_cast<const T*>(m_data); }
    template <typename T>
    std::span<T> span() { return {data_as<T>(), static_cast<size_t>(numel())}; }
    template <typename T>
    std::span<const T> span() const { return {data_as<T>(), static_cast<size_t>(numel())}; }

    // Same bytes, new shape with the same number of elements.
    Tensor reshape(std::vector<int64_t> shape) const;
    // Rows [begin, end) of the outermost dimension.
    Tensor slice_rows(int64_t begin, int64_t end) const;

    std::string shape_string() const;  // "[4, 256]"

private:
    DType m_dtype = DType::F32;
    Device m_device = Device::CPU;
    std::vector<int64_t> m_shape;
    void* m_data = nullptr;
    std::shared_ptr<const void> m_storage;
};

// Element count of a shape; throws on negative dimensions or overflow.
int64_t shape_numel(const std::vector<int64_t>& shape);

}  // namespace k2

#include "core/tensor.h"

#include <cstring>
#include <limits>

namespace k2 {

int64_t shape_numel(const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (const int64_t d : shape) {
        K2_CHECK(d >= 0, "negative dimension {} in a tensor shape", d);
        K2_CHECK(d == 0 || n <= std::numeric_limits<int64_t>::max() / d, "tensor shape overflows int64");
        n *= d;
    }
    return n;
}

Tensor Tensor::zeros(DType dtype, std::vector<int64_t> shape) {
    Tensor t;
    t.m_dtype = dtype;
    t.m_shape = std::move(shape);
    const size_t bytes = static_cast<size_t>(shape_numel(t.m_shape)) * dtype_size(dtype);
    std::shared_ptr<uint8_t[]> storage(new uint8_t[bytes == 0 ? 1 : bytes]());
    t.m_data = storage.get();
    t.m_storage = std::shared_ptr<const void>(storage, storage.get());
    return t;
}

Tensor Tensor::view(DType dtype, std::vector<int64_t> shape, void* data, std::shared_ptr<const void> keep_alive,
                    Device device) {
    Tensor t;
    t.m_dtype = dtype;
    t.m_shape = std::move(shape);
    (void)shape_numel(t.m_shape);
    t.m_data = data;
    t.m_storage = std::move(keep_alive);
    t.m_device = device;
    return t;
}

int64_t Tensor::dim(int idx) const {
    const int r = rank();
    const int i = idx < 0 ? idx + r : idx;
    K2_CHECK(i >= 0 && i < r, "dimension {} out of range for a rank-{} tensor", idx, r);
    return m_shape[static_cast<size_t>(i)];
}

int64_t Tensor::numel() const { return shape_numel(m_shape); }

Tensor Tensor::reshape(std::vector<int64_t> shape) const {
    K2_CHECK(shape_numel(shape) == numel(), "cannot reshape {} to a different element count", shape_string());
    Tensor t = *this;
    t.m_shape = std::move(shape);
    return t;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
    K2_CHECK(rank() >= 1 && 0 <= begin && begin <= end && end <= m_shape[0], "bad row slice [{}, {}) of {}",
             begin, end, shape_string());
    Tensor t = *this;
    const int64_t row_elems = m_shape[0] == 0 ? 0 : numel() / m_shape[0];
    t.m_shape[0] = end - begin;
    t.m_data = static_cast<uint8_t*>(m_data) + static_cast<size_t>(begin * row_elems) * dtype_size(m_dtype);
    return t;
}

std::string Tensor::shape_string() const {
    std::string s = "[";
    for (size_t i = 0; i < m_shape.size(); ++i) {
        s += (i ? ", " : "") + std::to_string(m_shape[i]);
    }
    return s + "]";
}

}  // namespace k2

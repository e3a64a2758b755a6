#include "dist/communicator.h"

#include <cstring>

#include "core/error.h"

namespace k2::dist {

namespace {

size_t bytes_of(size_t count, DType dtype) { return count * dtype_size(dtype); }

void check_reducible(DType dtype) {
    K2_CHECK(dtype == DType::F32 || dtype == DType::BF16, "collective sum supports F32 and BF16, not {}",
             dtype_name(dtype));
}

}  // namespace

void add_in_place(void* dst, const void* src, size_t count, DType dtype) {
    check_reducible(dtype);
    if (dtype == DType::F32) {
        float* d = static_cast<float*>(dst);
        const float* s = static_cast<const float*>(src);
        for (size_t i = 0; i < count; ++i) {
            d[i] += s[i];
        }
        return;
    }
    uint16_t* d = static_cast<uint16_t*>(dst);
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (size_t i = 0; i < count; ++i) {
        d[i] = float_to_bf16(bf16_to_float(d[i]) + bf16_to_float(s[i]));
    }
}

AllToAllTotals check_all_to_all_v_args(int world_size, std::span<const int64_t> send_counts,
                                       std::span<const int64_t> send_displs, std::span<const int64_t> recv_counts,
                                       std::span<const int64_t> recv_displs) {
    const size_t n = static_cast<size_t>(world_size);
    K2_CHECK(send_counts.size() == n && send_displs.size() == n && recv_counts.size() == n &&
                 recv_displs.size() == n,
             "all_to_all_v: counts/displacements need {} entries, got {}/{}/{}/{}", n, send_counts.size(),
             send_displs.size(), recv_counts.size(), recv_displs.size());
    AllToAllTotals totals;
    for (size_t r = 0; r < n; ++r) {
        K2_CHECK(send_counts[r] >= 0 && send_displs[r] >= 0 && recv_counts[r] >= 0 && recv_displs[r] >= 0,
                 "all_to_all_v: negative count or displacement for rank {}", r);
        totals.send_total += send_counts[r];
        totals.recv_total += recv_counts[r];
    }
    return totals;
}

void SingleCommunicator::all_reduce_sum(void* /*buf*/, size_t /*count*/, DType dtype) { check_reducible(dtype); }

void SingleCommunicator::all_gather(const void* send, void* recv, size_t count, DType dtype) {
    if (send != recv) {
        std::memmove(recv, send, bytes_of(count, dtype));
    }
}

void SingleCommunicator::reduce_scatter_sum(const void* send, void* recv, size_t count, DType dtype) {
    check_reducible(dtype);
    if (send != recv) {
        std::memmove(recv, send, bytes_of(count, dtype));
    }
}

void SingleCommunicator::all_to_all_v(const void* send, std::span<const int64_t> send_counts,
                                      std::span<const int64_t> send_displs, void* recv,
                                      std::span<const int64_t> recv_counts, std::span<const int64_t> recv_displs,
                                      DType dtype) {
    check_all_to_all_v_args(1, send_counts, send_displs, recv_counts, recv_displs);
    K2_CHECK(send_counts[0] == recv_counts[0], "all_to_all_v: rank 0 sends {} elements to itself but expects {}",
             send_counts[0], recv_counts[0]);
    const size_t elem = dtype_size(dtype);
    std::memmove(static_cast<char*>(recv) + recv_displs[0] * elem,
                 static_cast<const char*>(send) + send_displs[0] * elem, send_counts[0] * elem);
}

void SingleCommunicator::send(const void* /*buf*/, size_t /*count*/, DType /*dtype*/, int peer) {
    K2_FAIL("send to rank {} in a group of size 1", peer);
}

void SingleCommunicator::recv(void* /*buf*/, size_t /*count*/, DType /*dtype*/, int peer) {
    K2_FAIL("recv from rank {} in a group of size 1", peer);
}

void SingleCommunicator::broadcast(void* /*buf*/, size_t /*count*/, DType /*dtype*/, int root) {
    K2_CHECK(root == 0, "broadcast root {} in a group of size 1", root);
}

}  // namespace k2::dist

#include "dist/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstring>

#include "core/error.h"

namespace k2::dist {

namespace {

#define K2_NCCL_CHECK(expr)                                                                              \
    do {                                                                                                 \
        const ncclResult_t k2_nccl_result = (expr);                                                      \
        K2_CHECK(k2_nccl_result == ncclSuccess, "{} failed: {}", #expr, ncclGetErrorString(k2_nccl_result)); \
    } while (0)

#define K2_CUDA_RT_CHECK(expr)                                                                           \
    do {                                                                                                 \
        const cudaError_t k2_cuda_result = (expr);                                                       \
        K2_CHECK(k2_cuda_result == cudaSuccess, "{} failed: {}", #expr, cudaGetErrorString(k2_cuda_result)); \
    } while (0)

// Reductions need the real type; data movement runs on bytes so any dtype works.
ncclDataType_t reduce_type(DType dtype) {
    if (dtype == DType::F32) {
        return ncclFloat32;
    }
    K2_CHECK(dtype == DType::BF16, "NCCL sum supports F32 and BF16, not {}", dtype_name(dtype));
    return ncclBfloat16;
}

}  // namespace

NcclCommunicator::NcclCommunicator(Communicator& bootstrap, int device)
    : m_rank(bootstrap.rank()), m_size(bootstrap.size()), m_device(device) {
    K2_CUDA_RT_CHECK(cudaSetDevice(m_device));
    ncclUniqueId id;
    std::memset(&id, 0, sizeof(id));
    if (m_rank == 0) {
        K2_NCCL_CHECK(ncclGetUniqueId(&id));
    }
    bootstrap.broadcast(&id, sizeof(id), DType::U8, 0);
    K2_NCCL_CHECK(ncclCommInitRank(&m_comm, m_size, id, m_rank));
    cudaStream_t stream = nullptr;
    K2_CUDA_RT_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    m_own_stream = stream;
    m_stream = stream;
    K2_CUDA_RT_CHECK(cudaMalloc(&m_barrier_buf, sizeof(float)));
}

NcclCommunicator::~NcclCommunicator() {
    if (m_comm != nullptr) {
        ncclCommDestroy(m_comm);
    }
    if (m_barrier_buf != nullptr) {
        cudaFree(m_barrier_buf);
    }
    if (m_own_stream != nullptr) {
        cudaStreamDestroy(m_own_stream);
    }
}

void NcclCommunicator::set_stream(CUstream_st* stream) { m_stream = stream != nullptr ? stream : m_own_stream; }

void NcclCommunicator::synchronize() { K2_CUDA_RT_CHECK(cudaStreamSynchronize(m_stream)); }

void NcclCommunicator::all_reduce_sum(void* buf, size_t count, DType dtype) {
    K2_NCCL_CHECK(ncclAllReduce(buf, buf, count, reduce_type(dtype), ncclSum, m_comm, m_stream));
}

void NcclCommunicator::all_gather(const void* send, void* recv, size_t count, DType dtype) {
    K2_NCCL_CHECK(ncclAllGather(send, recv, count * dtype_size(dtype), ncclUint8, m_comm, m_stream));
}

void NcclCommunicator::reduce_scatter_sum(const void* send, void* recv, size_t count, DType dtype) {
    K2_NCCL_CHECK(ncclReduceScatter(send, recv, count, reduce_type(dtype), ncclSum, m_comm, m_stream));
}

// NCCL has no alltoallv: grouped point-to-point sends and receives are its documented way to build one.
void NcclCommunicator::all_to_all_v(const void* send, std::span<const int64_t> send_counts,
                                    std::span<const int64_t> send_displs, void* recv,
                                    std::span<const int64_t> recv_counts, std::span<const int64_t> recv_displs,
                                    DType dtype) {
    check_all_to_all_v_args(m_size, send_counts, send_displs, recv_counts, recv_displs);
    const size_t elem = dtype_size(dtype);
    K2_NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < m_size; ++r) {
        if (send_counts[r] > 0) {
            K2_NCCL_CHECK(ncclSend(static_cast<const char*>(send) + send_displs[r] * elem, send_counts[r] * elem,
                                   ncclUint8, r, m_comm, m_stream));
        }
        if (recv_counts[r] > 0) {
            K2_NCCL_CHECK(ncclRecv(static_cast<char*>(recv) + recv_displs[r] * elem, recv_counts[r] * elem,
                                   ncclUint8, r, m_comm, m_stream));
        }
    }
    K2_NCCL_CHECK(ncclGroupEnd());
}

void NcclCommunicator::send(const void* buf, size_t count, DType dtype, int peer) {
    K2_NCCL_CHECK(ncclSend(buf, count * dtype_size(dtype), ncclUint8, peer, m_comm, m_stream));
}

void NcclCommunicator::recv(void* buf, size_t count, DType dtype, int peer) {
    K2_NCCL_CHECK(ncclRecv(buf, count * dtype_size(dtype), ncclUint8, peer, m_comm, m_stream));
}

void NcclCommunicator::broadcast(void* buf, size_t count, DType dtype, int root) {
    K2_NCCL_CHECK(ncclBroadcast(buf, buf, count * dtype_size(dtype), ncclUint8, root, m_comm, m_stream));
}

void NcclCommunicator::barrier() {
    K2_NCCL_CHECK(ncclAllReduce(m_barrier_buf, m_barrier_buf, 1, ncclFloat32, ncclSum, m_comm, m_stream));
    synchronize();
}

}  // namespace k2::dist

// NcclCommunicator: the GPU Communicator on NCCL (from the CUDA toolkit). Compiled only when K2_HAVE_NCCL.
//
// Unlike the CPU communicators every pointer is a *device* pointer on this rank's GPU, and each call only
// enqueues the collective on stream() and returns: the result is ready when that stream reaches it, so model
// kernels on the same stream order themselves after it without a host sync (call synchronize() when the host
// needs the data). barrier() does synchronize. The NCCL unique id travels over a CPU bootstrap Communicator
// (a GlooCommunicator of the same ranks), so no extra rendezvous protocol is needed.
#pragma once

#include <memory>

#include "dist/communicator.h"

struct CUstream_st;
struct ncclComm;

namespace k2::dist {

class NcclCommunicator final : public Communicator {
public:
    // Collective over bootstrap's ranks: each rank passes the CUDA device it owns. Creates its own stream.
    NcclCommunicator(Communicator& bootstrap, int device);
    ~NcclCommunicator() override;
    NcclCommunicator(const NcclCommunicator&) = delete;
    NcclCommunicator& operator=(const NcclCommunicator&) = delete;

    int rank() const override { return m_rank; }
    int size() const override { return m_size; }
    std::string backend_name() const override { return "nccl"; }
    using Communicator::all_reduce_sum;
    int device() const { return m_device; }
    CUstream_st* stream() const { return m_stream; }
    void set_stream(CUstream_st* stream);  // nullptr: back to the communicator's own stream
    void synchronize();                     // waits for everything enqueued on stream()

    void all_reduce_sum(void* buf, size_t count, DType dtype) override;
    void all_gather(const void* send, void* recv, size_t count, DType dtype) override;
    void reduce_scatter_sum(const void* send, void* recv, size_t count, DType dtype) override;
    void all_to_all_v(const void* send, std::span<const int64_t> send_counts, std::span<const int64_t> send_displs,
                      void* recv, std::span<const int64_t> recv_counts, std::span<const int64_t> recv_displs,
                      DType dtype) override;
    void send(const void* buf, size_t count, DType dtype, int peer) override;
    void recv(void* buf, size_t count, DType dtype, int peer) override;
    void broadcast(void* buf, size_t count, DType dtype, int root) override;
    void barrier() override;

private:
    int m_rank;
    int m_size;
    int m_device;
    ncclComm* m_comm = nullptr;
    CUstream_st* m_own_stream = nullptr;
    CUstream_st* m_stream = nullptr;
    float* m_barrier_buf = nullptr;  // [1] device scratch for barrier()
};

}  // namespace k2::dist

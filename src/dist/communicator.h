// Communicator: the collective operations one rank of a parallel group calls (TP all-reduce, DCP all-gather /
// reduce-scatter, EP all-to-all-v, PP send/recv). Every rank of the group must call the same collectives in the
// same order with matching sizes; a mismatch or a dead peer surfaces as k2::Error (never a silent hang: each
// implementation has a timeout).
//
// Buffers: the CPU implementations (SingleCommunicator, GlooCommunicator) take host pointers and are synchronous:
// the result is in place when the call returns. The CUDA implementation (NcclCommunicator,
// nccl_communicator.h) takes *device* pointers and enqueues the collective on its cudaStream_t (set_stream);
// the call returns once the work is enqueued, and the result is ready when that stream reaches it, so kernels on
// the same stream order themselves after it without a host sync. The interface is the same for both; callers
// that own device memory simply pass device pointers to a NcclCommunicator.
//
// Counts are in elements of `dtype`, never bytes. Supported element types: F32 and BF16 for the reductions
// (BF16 is summed in fp32 and rounded once per partial sum, as NCCL does), any dtype for the data movement ops.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "core/dtype.h"

namespace k2::dist {

class Communicator {
public:
    virtual ~Communicator() = default;

    virtual int rank() const = 0;
    virtual int size() const = 0;
    virtual std::string backend_name() const = 0;  // "single", "gloo", "nccl"

    // In place: buf[i] = sum over ranks of buf[i].  buf: [count]
    virtual void all_reduce_sum(void* buf, size_t count, DType dtype) = 0;
    // recv = concat over ranks r of rank r's send.  send: [count]  recv: [size * count]
    virtual void all_gather(const void* send, void* recv, size_t count, DType dtype) = 0;
    // recv = slice `rank` of the elementwise sum of every rank's send.  send: [size * count]  recv: [count]
    virtual void reduce_scatter_sum(const void* send, void* recv, size_t count, DType dtype) = 0;
    // MPI_Alltoallv: to rank r goes send[send_displs[r] .. + send_counts[r]]; from rank r arrives
    // recv[recv_displs[r] .. + recv_counts[r]]. All spans have size() entries, counts in elements.
    // recv_counts[r] on this rank must equal send_counts[this rank] on rank r (exchange counts first with
    // an all_to_all of one int per rank when they are not known).
    virtual void all_to_all_v(const void* send, std::span<const int64_t> send_counts,
                              std::span<const int64_t> send_displs, void* recv,
                              std::span<const int64_t> recv_counts, std::span<const int64_t> recv_displs,
                              DType dtype) = 0;
    // Point to point (PP activations): blocks until the matching recv/send on `peer` completed.
    virtual void send(const void* buf, size_t count, DType dtype, int peer) = 0;
    virtual void recv(void* buf, size_t count, DType dtype, int peer) = 0;
    // buf on `root` is copied to every other rank.  buf: [count]
    virtual void broadcast(void* buf, size_t count, DType dtype, int root) = 0;
    virtual void barrier() = 0;

    // Typed conveniences (derived classes re-export them with `using Communicator::all_reduce_sum`).
    void all_reduce_sum(float* buf, size_t count) { all_reduce_sum(buf, count, DType::F32); }
    void all_reduce_sum(std::span<float> buf) { all_reduce_sum(buf.data(), buf.size(), DType::F32); }
    // bf16 values as their raw 16-bit patterns (core/dtype.h's bf16_to_float / float_to_bf16).
    void all_reduce_sum_bf16(std::span<uint16_t> buf) { all_reduce_sum(buf.data(), buf.size(), DType::BF16); }
};

// Size 1: every collective is a copy or a no-op. Used when -tp/-dp/-pp are all 1, so model code never branches
// on "is there a communicator".
class SingleCommunicator final : public Communicator {
public:
    int rank() const override { return 0; }
    int size() const override { return 1; }
    std::string backend_name() const override { return "single"; }
    using Communicator::all_reduce_sum;
    void all_reduce_sum(void* buf, size_t count, DType dtype) override;
    void all_gather(const void* send, void* recv, size_t count, DType dtype) override;
    void reduce_scatter_sum(const void* send, void* recv, size_t count, DType dtype) override;
    void all_to_all_v(const void* send, std::span<const int64_t> send_counts, std::span<const int64_t> send_displs,
                      void* recv, std::span<const int64_t> recv_counts, std::span<const int64_t> recv_displs,
                      DType dtype) override;
    void send(const void* buf, size_t count, DType dtype, int peer) override;
    void recv(void* buf, size_t count, DType dtype, int peer) override;
    void broadcast(void* buf, size_t count, DType dtype, int root) override;
    void barrier() override {}
};

// Shared argument checks of the all_to_all_v implementations; returns the total send / recv element counts.
struct AllToAllTotals {
    int64_t send_total = 0;
    int64_t recv_total = 0;
};
AllToAllTotals check_all_to_all_v_args(int world_size, std::span<const int64_t> send_counts,
                                       std::span<const int64_t> send_displs, std::span<const int64_t> recv_counts,
                                       std::span<const int64_t> recv_displs);

// Elementwise dst[i] += src[i] for the reducible dtypes (F32, BF16 via fp32); throws for others.
void add_in_place(void* dst, const void* src, size_t count, DType dtype);

}  // namespace k2::dist

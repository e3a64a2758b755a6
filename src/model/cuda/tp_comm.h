// The tensor-parallel (and decode-context-parallel, and data + expert parallel) collectives of the CUDA model on device
// buffers: NCCL between GPUs (enqueued on the model's stream, graph-capturable), or staged through host memory over the
// job's Gloo group, which lets several ranks share one GPU (the one-GPU test of the sharded CUDA model; NCCL refuses
// two ranks on one device).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>

#include "dist/communicator.h"

namespace k2::cuda_model {

class TpComm {
public:
    virtual ~TpComm() = default;
    virtual int size() const = 0;
    virtual const char* name() const = 0;  // for logs: "nccl", "p2p+nccl", "host"
    virtual bool graph_capturable() const = 0;
    // In place: buf [count] bf16 summed over the TP group.
    virtual void all_reduce_bf16(uint16_t* buf, int64_t count, cudaStream_t stream) = 0;
    // recv [size, count] = every rank's send [count] of `dtype`, in rank order.
    virtual void all_gather(const void* send, void* recv, int64_t count, DType dtype, cudaStream_t stream) = 0;
    // recv [count] bf16 = slice `rank` of the sum over ranks of send [size, count] (the expert combine of DP + EP).
    virtual void reduce_scatter_bf16(const uint16_t* send, uint16_t* recv, int64_t count, cudaStream_t stream) = 0;
};

// kind "nccl" (a NcclCommunicator bootstrapped over `group`, on `device`), "p2p" (NCCL with the one-shot
// peer-memory all-reduce for small messages), "auto" (p2p when every rank of the group is on this host on its own
// GPU with peer access, else nccl) or "host" (over `group` itself). Collective over `group`.
std::unique_ptr<TpComm> make_tp_comm(const std::string& kind, const std::shared_ptr<dist::Communicator>& group,
                                     int device);

}  // namespace k2::cuda_model

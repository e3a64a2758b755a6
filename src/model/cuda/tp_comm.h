// The tensor-parallel collectives of the CUDA model on device buffers: NCCL between GPUs (enqueued on the model's
// stream, graph-capturable), or staged through host memory over the job's Gloo group, which lets several ranks
// share one GPU (the one-GPU test of the sharded CUDA model; NCCL refuses two ranks on one device).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>

#include "dist/communicator.h"

namespace k2::cuda_model {

class TpComm {
public:
    virtual ~TpComm() = default;
    virtual int size() const = 0;
    virtual bool graph_capturable() const = 0;
    // In place: buf [count] bf16 summed over the TP group.
    virtual void all_reduce_bf16(uint16_t* buf, int64_t count, cudaStream_t stream) = 0;
    // recv [size, count] = every rank's send [count], in rank order.
    virtual void all_gather_f32(const float* send, float* recv, int64_t count, cudaStream_t stream) = 0;
};

// kind "nccl" (a NcclCommunicator bootstrapped over `group`, on `device`) or "host" (over `group` itself).
std::unique_ptr<TpComm> make_tp_comm(const std::string& kind, const std::shared_ptr<dist::Communicator>& group,
                                     int device);

}  // namespace k2::cuda_model

// A second stream of the CUDA model runner, for work of a step that can run beside the main stream's (the shared
// expert beside the router and the routed experts; the latent KV path beside the query path). fork and join are
// event edges, so a captured decode graph keeps the overlap. It has its own FP8 GEMM runner: two streams never
// share a cuBLASLt workspace.
#pragma once

#include <cuda_runtime.h>

#include <memory>

#include "backend/cuda/fp8_gemm.h"

namespace k2::cuda_model {

class SideStream {
public:
    SideStream();
    ~SideStream();
    SideStream(const SideStream&) = delete;
    SideStream& operator=(const SideStream&) = delete;

    // Off with K2_SIDE_STREAM=0 (A/B runs): the runner then enqueues everything on its main stream.
    static bool enabled_from_env();

    void fork(cudaStream_t main);  // the side stream waits for everything enqueued on main so far
    void join(cudaStream_t main);  // main waits for everything enqueued on the side stream so far
    cudaStream_t stream() const { return m_stream; }
    cuda::Fp8GemmRunner& fp8() { return *m_fp8; }

private:
    cudaStream_t m_stream = nullptr;
    cudaEvent_t m_fork = nullptr;
    cudaEvent_t m_join = nullptr;
    std::unique_ptr<cuda::Fp8GemmRunner> m_fp8;
};

}  // namespace k2::cuda_model

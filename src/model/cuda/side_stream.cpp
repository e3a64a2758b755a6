#include "model/cuda/side_stream.h"

#include <cstdlib>
#include <string_view>

#include "backend/cuda/cuda_check.h"

namespace k2::cuda_model {

SideStream::SideStream() {
    CUDA_CHECK(cudaStreamCreateWithFlags(&m_stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&m_fork, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&m_join, cudaEventDisableTiming));
    m_fp8 = std::make_unique<cuda::Fp8GemmRunner>();
}

SideStream::~SideStream() {
    cudaStreamSynchronize(m_stream);
    m_fp8.reset();
    cudaEventDestroy(m_join);
    cudaEventDestroy(m_fork);
    cudaStreamDestroy(m_stream);
}

bool SideStream::enabled_from_env() {
    const char* value = std::getenv("K2_SIDE_STREAM");
    return value == nullptr || std::string_view(value) != "0";
}

void SideStream::fork(cudaStream_t main) {
    CUDA_CHECK(cudaEventRecord(m_fork, main));
    CUDA_CHECK(cudaStreamWaitEvent(m_stream, m_fork, 0));
}

void SideStream::join(cudaStream_t main) {
    CUDA_CHECK(cudaEventRecord(m_join, m_stream));
    CUDA_CHECK(cudaStreamWaitEvent(main, m_join, 0));
}

}  // namespace k2::cuda_model

#include "model/cuda/tp_comm.h"

#include <vector>

#include "backend/cuda/cuda_check.h"
#include "core/error.h"
#ifdef K2_HAVE_NCCL
#include "dist/nccl_communicator.h"
#endif

namespace k2::cuda_model {

namespace {

class HostStagedComm final : public TpComm {
public:
    explicit HostStagedComm(std::shared_ptr<dist::Communicator> group) : m_group(std::move(group)) {}
    int size() const override { return m_group->size(); }
    bool graph_capturable() const override { return false; }

    void all_reduce_bf16(uint16_t* buf, int64_t count, cudaStream_t stream) override {
        m_bf16.resize(static_cast<size_t>(count));  // [count]
        CUDA_CHECK(cudaMemcpyAsync(m_bf16.data(), buf, m_bf16.size() * 2, cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
        m_group->all_reduce_sum(m_bf16.data(), m_bf16.size(), DType::BF16);
        CUDA_CHECK(cudaMemcpyAsync(buf, m_bf16.data(), m_bf16.size() * 2, cudaMemcpyHostToDevice, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));  // m_bf16 is reused by the next call
    }

    void all_gather_f32(const float* send, float* recv, int64_t count, cudaStream_t stream) override {
        m_send.resize(static_cast<size_t>(count));           // [count]
        m_recv.resize(static_cast<size_t>(count * size()));  // [size, count]
        CUDA_CHECK(cudaMemcpyAsync(m_send.data(), send, m_send.size() * 4, cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
        m_group->all_gather(m_send.data(), m_recv.data(), m_send.size(), DType::F32);
        CUDA_CHECK(cudaMemcpyAsync(recv, m_recv.data(), m_recv.size() * 4, cudaMemcpyHostToDevice, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
    }

private:
    std::shared_ptr<dist::Communicator> m_group;
    std::vector<uint16_t> m_bf16;
    std::vector<float> m_send;
    std::vector<float> m_recv;
};

#ifdef K2_HAVE_NCCL
class NcclComm final : public TpComm {
public:
    NcclComm(dist::Communicator& bootstrap, int device) : m_nccl(bootstrap, device) {}
    int size() const override { return m_nccl.size(); }
    bool graph_capturable() const override { return true; }

    void all_reduce_bf16(uint16_t* buf, int64_t count, cudaStream_t stream) override {
        m_nccl.set_stream(stream);
        m_nccl.all_reduce_sum(buf, static_cast<size_t>(count), DType::BF16);
    }
    void all_gather_f32(const float* send, float* recv, int64_t count, cudaStream_t stream) override {
        m_nccl.set_stream(stream);
        m_nccl.all_gather(send, recv, static_cast<size_t>(count), DType::F32);
    }

private:
    dist::NcclCommunicator m_nccl;
};
#endif

}  // namespace

std::unique_ptr<TpComm> make_tp_comm(const std::string& kind, const std::shared_ptr<dist::Communicator>& group,
                                     int device) {
    if (kind == "host") {
        return std::make_unique<HostStagedComm>(group);
    }
    K2_CHECK(kind == "nccl", "K2_TP_COMM must be nccl or host, got '{}'", kind);
#ifdef K2_HAVE_NCCL
    return std::make_unique<NcclComm>(*group, device);
#else
    (void)device;
    K2_FAIL(
        "this k2 was built without NCCL: tensor parallelism on GPUs needs it (K2_TP_COMM=host stages through "
        "host memory instead)");
#endif
}

}  // namespace k2::cuda_model

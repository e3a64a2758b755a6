#include "model/cuda/tp_comm.h"

#include <vector>

#include "backend/cuda/cuda_check.h"
#include "core/error.h"
#ifdef K2_HAVE_NCCL
#include <unistd.h>

#include <functional>
#include <string>

#include "core/log.h"
#include "dist/nccl_communicator.h"
#include "dist/p2p_allreduce.h"
#endif

namespace k2::cuda_model {

namespace {

class HostStagedComm final : public TpComm {
public:
    explicit HostStagedComm(std::shared_ptr<dist::Communicator> group) : m_group(std::move(group)) {}
    int size() const override { return m_group->size(); }
    const char* name() const override { return "host"; }
    bool graph_capturable() const override { return false; }

    void all_reduce_bf16(uint16_t* buf, int64_t count, cudaStream_t stream) override {
        m_bf16.resize(static_cast<size_t>(count));  // [count]
        CUDA_CHECK(cudaMemcpyAsync(m_bf16.data(), buf, m_bf16.size() * 2, cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
        m_group->all_reduce_sum(m_bf16.data(), m_bf16.size(), DType::BF16);
        CUDA_CHECK(cudaMemcpyAsync(buf, m_bf16.data(), m_bf16.size() * 2, cudaMemcpyHostToDevice, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));  // m_bf16 is reused by the next call
    }

    void all_gather(const void* send, void* recv, int64_t count, DType dtype, cudaStream_t stream) override {
        const size_t bytes = static_cast<size_t>(count) * dtype_size(dtype);
        m_send.resize(bytes);                                // [count] of dtype
        m_recv.resize(bytes * static_cast<size_t>(size()));  // [size, count]
        CUDA_CHECK(cudaMemcpyAsync(m_send.data(), send, bytes, cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
        m_group->all_gather(m_send.data(), m_recv.data(), bytes, DType::U8);
        CUDA_CHECK(cudaMemcpyAsync(recv, m_recv.data(), m_recv.size(), cudaMemcpyHostToDevice, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
    }

    void reduce_scatter_bf16(const uint16_t* send, uint16_t* recv, int64_t count, cudaStream_t stream) override {
        m_bf16.resize(static_cast<size_t>(count) * static_cast<size_t>(size()));  // [size, count]
        m_bf16_out.resize(static_cast<size_t>(count));                            // [count]
        CUDA_CHECK(cudaMemcpyAsync(m_bf16.data(), send, m_bf16.size() * 2, cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
        m_group->reduce_scatter_sum(m_bf16.data(), m_bf16_out.data(), m_bf16_out.size(), DType::BF16);
        CUDA_CHECK(cudaMemcpyAsync(recv, m_bf16_out.data(), m_bf16_out.size() * 2, cudaMemcpyHostToDevice, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
    }

private:
    std::shared_ptr<dist::Communicator> m_group;
    std::vector<uint16_t> m_bf16;
    std::vector<uint16_t> m_bf16_out;
    std::vector<uint8_t> m_send;
    std::vector<uint8_t> m_recv;
};

#ifdef K2_HAVE_NCCL
class NcclComm final : public TpComm {
public:
    NcclComm(dist::Communicator& bootstrap, int device) : m_nccl(bootstrap, device) {}
    int size() const override { return m_nccl.size(); }
    const char* name() const override { return "nccl"; }
    bool graph_capturable() const override { return true; }

    void all_reduce_bf16(uint16_t* buf, int64_t count, cudaStream_t stream) override {
        m_nccl.set_stream(stream);
        m_nccl.all_reduce_sum(buf, static_cast<size_t>(count), DType::BF16);
    }
    void all_gather(const void* send, void* recv, int64_t count, DType dtype, cudaStream_t stream) override {
        m_nccl.set_stream(stream);
        m_nccl.all_gather(send, recv, static_cast<size_t>(count), dtype);
    }
    void reduce_scatter_bf16(const uint16_t* send, uint16_t* recv, int64_t count, cudaStream_t stream) override {
        m_nccl.set_stream(stream);
        m_nccl.reduce_scatter_sum(send, recv, static_cast<size_t>(count), DType::BF16);
    }

private:
    dist::NcclCommunicator m_nccl;
};

// NCCL plus the one-shot peer-memory all-reduce (p2p_allreduce.h) for the small messages of decode steps: one
// kernel and one flag barrier instead of NCCL's protocol (docs/perf/multigpu.md: 4.8 vs 7.4 us on two H200s).
// Larger messages (prefill) fall back to NCCL inside P2pAllReduce. Results are summed in fp32 in rank order and
// rounded once, the same bits on every rank.
class P2pComm final : public TpComm {
public:
    P2pComm(std::shared_ptr<dist::Communicator> bootstrap, int device)
        : m_bootstrap(std::move(bootstrap)), m_nccl(*m_bootstrap, device), m_p2p(*m_bootstrap, device, &m_nccl) {}
    ~P2pComm() override {
        // A peer may still read this rank's staging buffer until its own last call ends (p2p_allreduce.h). The
        // caller's stream may be gone by now: back to the communicators' own streams first.
        m_p2p.set_stream(nullptr);
        m_nccl.set_stream(nullptr);
        try {
            m_p2p.synchronize();
            m_bootstrap->barrier();
        } catch (const std::exception& e) {
            K2_WARN("tensor-parallel teardown: {}", e.what());
        }
    }
    int size() const override { return m_nccl.size(); }
    const char* name() const override { return "p2p+nccl"; }
    bool graph_capturable() const override { return true; }

    void all_reduce_bf16(uint16_t* buf, int64_t count, cudaStream_t stream) override {
        m_p2p.set_stream(stream);
        m_p2p.all_reduce_sum(buf, static_cast<size_t>(count), DType::BF16);
    }
    void all_gather(const void* send, void* recv, int64_t count, DType dtype, cudaStream_t stream) override {
        m_nccl.set_stream(stream);
        m_nccl.all_gather(send, recv, static_cast<size_t>(count), dtype);
    }
    void reduce_scatter_bf16(const uint16_t* send, uint16_t* recv, int64_t count, cudaStream_t stream) override {
        m_nccl.set_stream(stream);
        m_nccl.reduce_scatter_sum(send, recv, static_cast<size_t>(count), DType::BF16);
    }

private:
    std::shared_ptr<dist::Communicator> m_bootstrap;
    dist::NcclCommunicator m_nccl;
    dist::P2pAllReduce m_p2p;
};

// Peer memory needs every rank of the group on one host, on distinct GPUs that can reach each other. Decided
// collectively (every rank gets the same answer, so every rank builds the same kind of communicator).
bool peer_memory_usable(dist::Communicator& group, int device) {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    const auto host_id = static_cast<int64_t>(std::hash<std::string>{}(host)&0x7fffffffffffll);
    const int64_t mine[2] = {host_id, device};
    std::vector<int64_t> all(static_cast<size_t>(2 * group.size()));  // [ranks, (host, device)]
    group.all_gather(mine, all.data(), 2, DType::I64);
    float ok = group.size() <= 8 ? 1.0f : 0.0f;
    for (int r = 0; r < group.size(); ++r) {
        const int64_t peer_host = all[static_cast<size_t>(2 * r)];
        const auto peer_device = static_cast<int>(all[static_cast<size_t>(2 * r + 1)]);
        int can = 0;
        if (r != group.rank() && (peer_host != host_id || peer_device == device ||
                                  cudaDeviceCanAccessPeer(&can, device, peer_device) != cudaSuccess || can == 0)) {
            ok = 0.0f;
        }
    }
    group.all_reduce_sum(&ok, 1, DType::F32);
    return ok == static_cast<float>(group.size());
}
#endif

}  // namespace

std::unique_ptr<TpComm> make_tp_comm(const std::string& kind, const std::shared_ptr<dist::Communicator>& group,
                                     int device) {
    if (kind == "host") {
        return std::make_unique<HostStagedComm>(group);
    }
    K2_CHECK(kind == "auto" || kind == "nccl" || kind == "p2p", "K2_TP_COMM must be auto, nccl, p2p or host, got '{}'",
             kind);
#ifdef K2_HAVE_NCCL
    if (kind == "p2p" || (kind == "auto" && peer_memory_usable(*group, device))) {
        return std::make_unique<P2pComm>(group, device);
    }
    return std::make_unique<NcclComm>(*group, device);
#else
    (void)device;
    K2_FAIL(
        "this k2 was built without NCCL: tensor parallelism on GPUs needs it (K2_TP_COMM=host stages through "
        "host memory instead)");
#endif
}

}  // namespace k2::cuda_model

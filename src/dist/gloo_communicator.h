// GlooCommunicator: the CPU multi-process Communicator (one process per rank, TCP on the configured address),
// built on Gloo from Debian's libgloo-dev. Used for CPU ranks in tests and for the CPU backend; also the
// bootstrap channel that hands NCCL its unique id.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "dist/communicator.h"

namespace gloo {
class Context;
}  // namespace gloo

namespace k2::dist {

class TcpStore;

struct GlooOptions {
    int rank = 0;
    int world_size = 1;
    // Rendezvous: rank 0 serves a TcpStore on master_addr:master_port (vLLM's --master-addr/--master-port).
    std::string master_addr = "127.0.0.1";
    int master_port = 29501;
    // Address this rank's Gloo pairs listen on (ephemeral ports). Empty: master_addr, right for one host;
    // multi-node ranks pass their own interface address. Never 0.0.0.0 unless asked for explicitly.
    std::string host_addr;
    // Distinguishes several groups on one store (e.g. "tp0", "dp").
    std::string prefix = "k2";
    // Several groups of one job (world, TP groups, DP group) share one store: pass the world's store() here
    // with a distinct prefix and the group's own rank/world_size; master_addr/master_port are then unused.
    std::shared_ptr<TcpStore> store;
    // Upper bound on rendezvous and on every collective; a dead or stuck peer turns into k2::Error after it.
    std::chrono::milliseconds timeout{30000};
};

class GlooCommunicator final : public Communicator {
public:
    explicit GlooCommunicator(const GlooOptions& options);  // blocks until all ranks met (or timeout)
    ~GlooCommunicator() override;

    int rank() const override { return m_rank; }
    int size() const override { return m_size; }
    std::string backend_name() const override { return "gloo"; }
    const std::shared_ptr<TcpStore>& store() const { return m_store; }
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
    void barrier() override;

private:
    template <typename Fn>
    void run_op(const char* op, Fn&& fn);

    int m_rank;
    int m_size;
    std::chrono::milliseconds m_timeout;
    std::shared_ptr<TcpStore> m_store;
    std::shared_ptr<gloo::Context> m_context;
    uint64_t m_p2p_slot_base = 0;
};

}  // namespace k2::dist

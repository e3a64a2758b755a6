#include "dist/p2p_allreduce.h"

#include <cuda_runtime_api.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "core/error.h"
#include "dist/nccl_communicator.h"
#include "dist/p2p_allreduce_detail.h"

namespace k2::dist {

namespace {

#define K2_P2P_CUDA_CHECK(expr)                                                       \
    do {                                                                              \
        const cudaError_t k2_cuda_result = (expr);                                    \
        K2_CHECK(k2_cuda_result == cudaSuccess, "P2pAllReduce: {} failed: {}", #expr, \
                 cudaGetErrorString(k2_cuda_result));                                 \
    } while (0)

constexpr size_t kAlign = 256;

size_t round_up(size_t n, size_t to) {
    return (n + to - 1) / to * to;
}

// What each rank tells the others about its allocation; exchanged as raw bytes over the bootstrap.
struct PeerInfo {
    cudaIpcMemHandle_t handle;
    uint64_t base;           // the pointer itself, used by ranks that are threads of the same process
    uint64_t process_token;  // random per process: equal tokens mean "same address space"
    uint64_t max_bytes;
    int32_t device;
    char pci_bus_id[32];
    char host[64];
};

uint64_t process_token() {
    static const uint64_t token = [] {
        std::random_device rd;
        return (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(getpid());
    }();
    return token;
}

}  // namespace

P2pAllReduce::P2pAllReduce(Communicator& bootstrap, int device, NcclCommunicator* fallback,
                           const P2pAllReduceOptions& options)
    : m_rank(bootstrap.rank()),
      m_size(bootstrap.size()),
      m_device(device),
      m_fallback(fallback),
      m_max_bytes(options.max_bytes),
      m_staging_bytes(round_up(std::max<size_t>(options.max_bytes, 16), kAlign)),
      m_signal_bytes(round_up(sizeof(detail::P2pSignals), kAlign)),
      m_timeout_ns(static_cast<uint64_t>(std::chrono::nanoseconds(options.timeout).count())) {
    K2_CHECK(m_size >= 1 && m_size <= detail::kP2pMaxRanks, "P2pAllReduce: {} ranks, at most {} supported", m_size,
             detail::kP2pMaxRanks);
    K2_CHECK(options.timeout.count() > 0, "P2pAllReduce: timeout must be positive, got {} ms", options.timeout.count());
    K2_CHECK(fallback == nullptr || (fallback->rank() == m_rank && fallback->size() == m_size),
             "P2pAllReduce: the NCCL fallback is rank {} of {}, the bootstrap rank {} of {}",
             fallback == nullptr ? -1 : fallback->rank(), fallback == nullptr ? -1 : fallback->size(), m_rank, m_size);
    K2_P2P_CUDA_CHECK(cudaSetDevice(m_device));
    try {
        cudaStream_t stream = nullptr;
        K2_P2P_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        m_own_stream = stream;
        m_stream = stream;
        // Zeroed (flags and epochs at 0) before any peer can see the handle.
        const size_t total = m_signal_bytes + 2 * m_staging_bytes;
        K2_P2P_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&m_local), total));
        K2_P2P_CUDA_CHECK(cudaMemset(m_local, 0, total));
        K2_P2P_CUDA_CHECK(cudaDeviceSynchronize());
        open_peers(bootstrap);
        // Nobody launches before every rank mapped every peer.
        bootstrap.barrier();
    } catch (...) {
        release();
        throw;
    }
}

void P2pAllReduce::open_peers(Communicator& bootstrap) {
    PeerInfo mine;
    std::memset(&mine, 0, sizeof(mine));
    K2_P2P_CUDA_CHECK(cudaIpcGetMemHandle(&mine.handle, m_local));
    mine.base = reinterpret_cast<uint64_t>(m_local);
    mine.process_token = process_token();
    mine.max_bytes = m_max_bytes;
    mine.device = m_device;
    K2_P2P_CUDA_CHECK(cudaDeviceGetPCIBusId(mine.pci_bus_id, sizeof(mine.pci_bus_id) - 1, m_device));
    gethostname(mine.host, sizeof(mine.host) - 1);
    std::vector<PeerInfo> all(m_size);
    bootstrap.all_gather(&mine, all.data(), sizeof(PeerInfo), DType::U8);

    m_peers.assign(m_size, Mapping{});
    for (int r = 0; r < m_size; ++r) {
        const PeerInfo& peer = all[r];
        K2_CHECK(peer.max_bytes == m_max_bytes,
                 "P2pAllReduce: rank {} has max_bytes {}, rank {} has {}: every rank must use the same limit", r,
                 peer.max_bytes, m_rank, m_max_bytes);
        K2_CHECK(std::strncmp(peer.host, mine.host, sizeof(mine.host)) == 0,
                 "P2pAllReduce: rank {} is on host '{}', rank {} on '{}': peer memory needs one host", r, peer.host,
                 m_rank, mine.host);
        if (r == m_rank) {
            m_peers[r].base = m_local;
        } else {
            map_peer(r, &peer, &mine);
        }
    }
}

void P2pAllReduce::map_peer(int r, const void* peer_info, const void* my_info) {
    const PeerInfo& peer = *static_cast<const PeerInfo*>(peer_info);
    const PeerInfo& mine = *static_cast<const PeerInfo*>(my_info);
    K2_CHECK(std::strncmp(peer.pci_bus_id, mine.pci_bus_id, sizeof(mine.pci_bus_id)) != 0,
             "P2pAllReduce: ranks {} and {} share the GPU {}", r, m_rank, mine.pci_bus_id);
    // The peer's GPU as numbered in this process (absent when CUDA_VISIBLE_DEVICES hides it: then only
    // cudaIpcOpenMemHandle can tell).
    int peer_device = -1;
    if (cudaDeviceGetByPCIBusId(&peer_device, peer.pci_bus_id) == cudaSuccess) {
        int can_access = 0;
        K2_P2P_CUDA_CHECK(cudaDeviceCanAccessPeer(&can_access, m_device, peer_device));
        K2_CHECK(can_access != 0,
                 "P2pAllReduce: GPU {} (rank {}) cannot access GPU {} (rank {}) as a peer (no NVLink or PCIe P2P "
                 "between them); use the NCCL communicator instead",
                 mine.pci_bus_id, m_rank, peer.pci_bus_id, r);
    } else {
        peer_device = -1;
        (void)cudaGetLastError();
    }
    if (peer.process_token == mine.process_token) {
        K2_CHECK(peer_device >= 0, "P2pAllReduce: rank {}'s GPU {} is not visible in its own process", r,
                 peer.pci_bus_id);
        const cudaError_t enabled = cudaDeviceEnablePeerAccess(peer_device, 0);
        K2_CHECK(enabled == cudaSuccess || enabled == cudaErrorPeerAccessAlreadyEnabled,
                 "P2pAllReduce: cudaDeviceEnablePeerAccess(GPU {} -> {}) failed: {}", m_device, peer_device,
                 cudaGetErrorString(enabled));
        (void)cudaGetLastError();
        m_peers[r].base = reinterpret_cast<char*>(peer.base);
        return;
    }
    void* mapped = nullptr;
    const cudaError_t opened = cudaIpcOpenMemHandle(&mapped, peer.handle, cudaIpcMemLazyEnablePeerAccess);
    K2_CHECK(opened == cudaSuccess, "P2pAllReduce: rank {} cannot map rank {}'s memory (GPU {}): {}", m_rank, r,
             peer.pci_bus_id, cudaGetErrorString(opened));
    m_peers[r].base = static_cast<char*>(mapped);
    m_peers[r].ipc_opened = true;
}

P2pAllReduce::~P2pAllReduce() {
    release();
}

void P2pAllReduce::release() noexcept {
    cudaSetDevice(m_device);
    if (m_stream != nullptr) {
        cudaStreamSynchronize(m_stream);
    }
    for (const Mapping& peer : m_peers) {
        if (peer.ipc_opened) {
            cudaIpcCloseMemHandle(peer.base);
        }
    }
    m_peers.clear();
    if (m_local != nullptr) {
        cudaFree(m_local);
        m_local = nullptr;
    }
    if (m_own_stream != nullptr) {
        cudaStreamDestroy(m_own_stream);
        m_own_stream = nullptr;
    }
    m_stream = nullptr;
}

void P2pAllReduce::set_stream(CUstream_st* stream) {
    m_stream = stream != nullptr ? stream : m_own_stream;
}

void P2pAllReduce::synchronize() {
    K2_P2P_CUDA_CHECK(cudaStreamSynchronize(m_stream));
}

bool P2pAllReduce::is_one_shot(size_t count, DType dtype) const {
    return m_size > 1 && count * dtype_size(dtype) <= m_max_bytes;
}

void P2pAllReduce::all_reduce_sum(const void* in, void* out, size_t count, DType dtype) {
    K2_CHECK(dtype == DType::F32 || dtype == DType::BF16, "P2pAllReduce: sum supports F32 and BF16, not {}",
             dtype_name(dtype));
    if (count == 0) {
        return;
    }
    const size_t bytes = count * dtype_size(dtype);
    const auto in_addr = reinterpret_cast<uintptr_t>(in);
    const auto out_addr = reinterpret_cast<uintptr_t>(out);
    K2_CHECK(in_addr == out_addr || in_addr + bytes <= out_addr || out_addr + bytes <= in_addr,
             "P2pAllReduce: in and out overlap without being the same buffer ({} bytes)", bytes);
    if (m_size == 1) {
        if (in != out) {
            K2_P2P_CUDA_CHECK(cudaMemcpyAsync(out, in, bytes, cudaMemcpyDeviceToDevice, m_stream));
        }
        return;
    }
    if (bytes <= m_max_bytes) {
        enqueue_one_shot(in, out, count, dtype);
    } else {
        enqueue_fallback(in, out, count, dtype);
    }
}

void P2pAllReduce::enqueue_one_shot(const void* in, void* out, size_t count, DType dtype) {
    detail::P2pLaunchParams params;
    params.in = in;
    params.out = out;
    params.count = static_cast<int64_t>(count);
    params.rank = m_rank;
    params.world_size = m_size;
    for (int r = 0; r < m_size; ++r) {
        params.signals[r] = reinterpret_cast<detail::P2pSignals*>(m_peers[r].base);
        params.staging[r] = m_peers[r].base + m_signal_bytes;
    }
    params.staging_bytes = static_cast<int64_t>(m_staging_bytes);
    params.timeout_ns = m_timeout_ns;
    const detail::P2pElem elem = dtype == DType::F32 ? detail::P2pElem::F32 : detail::P2pElem::BF16;
    K2_P2P_CUDA_CHECK(detail::launch_p2p_all_reduce(params, elem, m_stream));
}

void P2pAllReduce::enqueue_fallback(const void* in, void* out, size_t count, DType dtype) {
    const size_t bytes = count * dtype_size(dtype);
    K2_CHECK(m_fallback != nullptr,
             "P2pAllReduce: {} bytes is over the one-shot limit of {} bytes and no NCCL fallback was given", bytes,
             m_max_bytes);
    if (in != out) {
        K2_P2P_CUDA_CHECK(cudaMemcpyAsync(out, in, bytes, cudaMemcpyDeviceToDevice, m_stream));
    }
    CUstream_st* previous = m_fallback->stream();
    m_fallback->set_stream(m_stream);
    try {
        m_fallback->all_reduce_sum(out, count, dtype);
    } catch (...) {
        m_fallback->set_stream(previous);
        throw;
    }
    m_fallback->set_stream(previous);
}

}  // namespace k2::dist

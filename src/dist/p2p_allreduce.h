// P2pAllReduce: a one-shot all-reduce over peer (NVLink) memory for the small messages of tensor-parallel decode
// (two per layer of [batch, hidden] BF16: 14-229 KB on Kimi-K2), with NCCL for larger messages. Compiled only
// when K2_HAVE_NCCL (the CUDA toolkit is found).
//
// Every rank owns one device allocation that all ranks map: a signal area (per-block arrival flags) and two
// staging halves of max_bytes. A call is one kernel: each rank copies its input into its staging half, meets
// every peer at a flag barrier in peer memory, then reads all ranks' staged inputs over NVLink and sums them in
// fp32 in rank order 0..n-1 with one rounding, so every rank gets bitwise the same result (with more than two
// ranks not always NCCL's bits: NCCL rounds each partial sum, in ring order). One kernel with one flag barrier
// is meant to beat NCCL's protocol at these latency-bound sizes; the measurements are in docs/perf/multigpu.md
// ("TP all-reduce at decode sizes").
//
// Peer memory between processes (the production shape: one process per rank) travels as cudaIpcMemHandle_t over
// the CPU bootstrap Communicator; ranks that are threads of one process use the pointer directly after
// cudaDeviceEnablePeerAccess. All ranks must be on one host, on distinct GPUs that can access each other.
//
// Like NcclCommunicator, calls take device pointers and only enqueue on stream(); every rank must make the same
// calls in the same order, each rank's calls ordered on its stream. The calls are CUDA-graph capturable (all
// barrier state lives in device memory). A peer that never shows up traps the kernel after options.timeout: the
// stream then reports a launch failure (a sticky CUDA error), never a silent hang.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "dist/communicator.h"

struct CUstream_st;

namespace k2::dist {

class NcclCommunicator;

namespace detail {
struct P2pSignals;
}  // namespace detail

struct P2pAllReduceOptions {
    // Messages up to this many bytes take the one-shot path, larger ones go to NCCL. The same on every rank.
    size_t max_bytes = 512 * 1024;
    // How long a kernel waits for a peer before it traps.
    std::chrono::milliseconds timeout{20000};
};

class P2pAllReduce {
public:
    // Collective over bootstrap's ranks (at most 8, one GPU each, one host): `device` is this rank's CUDA device.
    // `fallback` (may be null: larger messages then throw) is an NCCL communicator of the same ranks; its stream
    // is switched to stream() for the duration of a fallback call. Creates its own stream.
    P2pAllReduce(Communicator& bootstrap, int device, NcclCommunicator* fallback,
                 const P2pAllReduceOptions& options = {});
    // Waits for this rank's stream. Destroy on all ranks after a bootstrap barrier: a peer may still be reading
    // this rank's staging buffer until its own last call finished.
    ~P2pAllReduce();
    P2pAllReduce(const P2pAllReduce&) = delete;
    P2pAllReduce& operator=(const P2pAllReduce&) = delete;

    int rank() const { return m_rank; }
    int size() const { return m_size; }
    int device() const { return m_device; }
    size_t max_bytes() const { return m_max_bytes; }
    CUstream_st* stream() const { return m_stream; }
    void set_stream(CUstream_st* stream);  // nullptr: back to the own stream
    void synchronize();                    // waits for stream(); throws on a trapped (timed-out) kernel

    // True when count elements of dtype take the one-shot path (false: NCCL).
    bool is_one_shot(size_t count, DType dtype) const;

    // out[i] = sum over ranks of in[i] (F32 or BF16). in == out is allowed (in place); other overlaps are not.
    // in: [count]  out: [count]
    void all_reduce_sum(const void* in, void* out, size_t count, DType dtype);
    void all_reduce_sum(void* buf, size_t count, DType dtype) { all_reduce_sum(buf, buf, count, dtype); }

private:
    struct Mapping {
        char* base = nullptr;  // rank r's allocation as mapped into this process
        bool ipc_opened = false;
    };

    void open_peers(Communicator& bootstrap);
    void map_peer(int r, const void* peer_info, const void* my_info);  // PeerInfo (p2p_allreduce.cpp)
    void release() noexcept;
    void enqueue_one_shot(const void* in, void* out, size_t count, DType dtype);
    void enqueue_fallback(const void* in, void* out, size_t count, DType dtype);

    int m_rank;
    int m_size;
    int m_device;
    NcclCommunicator* m_fallback;
    size_t m_max_bytes;
    size_t m_staging_bytes;  // one staging half: max_bytes rounded up to 256
    size_t m_signal_bytes;   // the signal area: sizeof(P2pSignals) rounded up to 256
    uint64_t m_timeout_ns;
    char* m_local = nullptr;  // [signal_bytes + 2 * staging_bytes] this rank's peer-visible allocation
    std::vector<Mapping> m_peers;
    CUstream_st* m_own_stream = nullptr;
    CUstream_st* m_stream = nullptr;
};

}  // namespace k2::dist

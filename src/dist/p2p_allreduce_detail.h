// Raw launch of the one-shot peer-memory all-reduce kernel (p2p_allreduce.cu); validation, IPC and the NCCL
// fallback live in p2p_allreduce.cpp. Shared by both so the signal layout has one definition.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace k2::dist::detail {

inline constexpr int kP2pMaxRanks = 8;
// The grid is fixed: every block takes part in every call's barrier, so all blocks of all ranks count calls in
// step and the epoch (and with it the staging half) is the same everywhere without any grid-wide sync.
inline constexpr int kP2pBlocks = 32;
inline constexpr int kP2pThreads = 512;

// One rank's signal area, at the start of its peer-visible allocation.
struct P2pSignals {
    // arrived[b][r]: the last epoch in which rank r's block b had finished staging its slice (written by rank r
    // over NVLink, read here).
    uint32_t arrived[kP2pBlocks][kP2pMaxRanks];
    // epoch[b]: how many calls this rank's block b has completed (read and written by this rank only).
    uint32_t epoch[kP2pBlocks];
};

enum class P2pElem : uint8_t { F32, BF16 };

struct P2pLaunchParams {
    const void* in = nullptr;  // [count] this rank's contribution (may equal out)
    void* out = nullptr;       // [count] the sum, identical bits on every rank
    int64_t count = 0;
    int rank = 0;
    int world_size = 0;
    // Rank r's signal area and its two staging halves [2][staging_bytes], as mapped into this process.
    P2pSignals* signals[kP2pMaxRanks] = {};
    char* staging[kP2pMaxRanks] = {};
    int64_t staging_bytes = 0;
    // A peer that never arrives (crashed, or a call order mismatch) traps the kernel after this long instead of
    // spinning forever; the host then sees a sticky launch failure.
    uint64_t timeout_ns = 0;
};

cudaError_t launch_p2p_all_reduce(const P2pLaunchParams& params, P2pElem elem, cudaStream_t stream);

}  // namespace k2::dist::detail

// The one-shot all-reduce kernel over peer memory (validation and setup in p2p_allreduce.cpp).
//
// One kernel per call, on a fixed grid of kP2pBlocks blocks on every rank. The message is cut into 16-byte
// chunks; chunk c belongs to the same block (same grid-stride slot) on every rank, because that mapping depends
// only on count, never on pointer alignment. Block b of each rank:
//   1. copies its chunks of `in` into this rank's staging half (epoch & 1) — fusing the copy saves a memcpy
//      launch and lets the input be any buffer, not only a registered one;
//   2. barrier with block b of every peer: publish "my chunks are staged in epoch e" by a release store into
//      each peer's arrived[b][me], then acquire-load its own arrived[b][peer] until it reaches e;
//   3. reads its chunks from every rank's staging half in rank order 0..n-1, sums in fp32 and rounds once, so
//      every rank computes bitwise the same sum.
// No barrier at the end: the next call stages into the other half, and the half used in call e is reused in
// call e + 2 only after this rank's call e + 1 went through a barrier with every peer, which the peers enter
// only after their call e (and its reads of our half) finished. So the calls of one rank must be ordered on a
// stream (or otherwise), as for NCCL. All state lives in device memory: the kernel is graph-capturable.
#include <cuda_bf16.h>

#include <cstdio>

#include "dist/p2p_allreduce_detail.h"

namespace k2::dist::detail {
namespace {

__device__ __forceinline__ uint32_t load_acquire_sys(const uint32_t* ptr) {
    uint32_t value;
    asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(value) : "l"(ptr) : "memory");
    return value;
}

__device__ __forceinline__ void store_release_sys(uint32_t* ptr, uint32_t value) {
    asm volatile("st.release.sys.global.u32 [%0], %1;" : : "l"(ptr), "r"(value) : "memory");
}

__device__ __forceinline__ uint64_t global_timer_ns() {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// Lanes of a 16-byte chunk as fp32, and back with one round-to-nearest-even.
template <P2pElem E>
struct ElemTraits;

template <>
struct ElemTraits<P2pElem::F32> {
    using T = float;
    static constexpr int kLanes = 4;
    __device__ static void unpack(const uint4& v, float (&f)[kLanes]) {
        f[0] = __uint_as_float(v.x);
        f[1] = __uint_as_float(v.y);
        f[2] = __uint_as_float(v.z);
        f[3] = __uint_as_float(v.w);
    }
    __device__ static T from_float(float f) { return f; }
};

template <>
struct ElemTraits<P2pElem::BF16> {
    using T = uint16_t;  // raw bf16 bits
    static constexpr int kLanes = 8;
    __device__ static void unpack(const uint4& v, float (&f)[kLanes]) {
        const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            f[2 * w] = __uint_as_float(words[w] << 16);
            f[2 * w + 1] = __uint_as_float(words[w] & 0xffff0000u);
        }
    }
    __device__ static T from_float(float f) {
        return __bfloat16_as_ushort(__float2bfloat16_rn(f));
    }
};

// Waits (thread `peer` of the block) until peer's block has published `epoch`; traps after the timeout so a
// missing peer becomes a launch failure instead of a hang. Signed difference: counters may wrap.
__device__ void wait_for_peer(const P2pLaunchParams& p, const uint32_t* flag, int peer, uint32_t epoch) {
    uint64_t start = 0;
    uint32_t spins = 0;
    while (static_cast<int32_t>(load_acquire_sys(flag) - epoch) < 0) {
        if ((++spins & 0xfffu) != 0) {
            continue;
        }
        const uint64_t now = global_timer_ns();
        if (start == 0) {
            start = now;
        } else if (now - start > p.timeout_ns) {
            printf(
                "k2 p2p all-reduce: rank %d block %d waited %llu ms for rank %d (epoch %u): peer missing or "
                "calls out of order\n",
                p.rank, static_cast<int>(blockIdx.x), static_cast<unsigned long long>((now - start) / 1000000), peer,
                epoch);
            __trap();
        }
    }
}

// Chunk c of the input into the staging half; a partial last chunk goes element-wise and leaves the unused lanes
// as they were (they are summed but never written out).
template <typename T, int kLanes>
__device__ __forceinline__ void stage_chunk(const T* in, uint4* staged, int64_t c, int64_t lanes, bool in_vec) {
    if (lanes == kLanes && in_vec) {
        staged[c] = reinterpret_cast<const uint4*>(in)[c];
    } else {
        T* dst = reinterpret_cast<T*>(staged + c);
        for (int64_t l = 0; l < lanes; ++l)
            dst[l] = in[c * kLanes + l];
    }
}

// Chunk c summed over every rank's staging half in rank order 0..n-1 in fp32, rounded once. All loads first so
// they are in flight together.
template <P2pElem E, int kRanks>
__device__ __forceinline__ void sum_chunk(const P2pLaunchParams& p, int64_t half, int64_t c,
                                          typename ElemTraits<E>::T (&result)[ElemTraits<E>::kLanes]) {
    using Traits = ElemTraits<E>;
    uint4 chunks[kRanks];
#pragma unroll
    for (int r = 0; r < kRanks; ++r)
        chunks[r] = reinterpret_cast<const uint4*>(p.staging[r] + half)[c];
    float acc[Traits::kLanes];
    Traits::unpack(chunks[0], acc);
#pragma unroll
    for (int r = 1; r < kRanks; ++r) {
        float v[Traits::kLanes];
        Traits::unpack(chunks[r], v);
#pragma unroll
        for (int l = 0; l < Traits::kLanes; ++l)
            acc[l] = __fadd_rn(acc[l], v[l]);
    }
#pragma unroll
    for (int l = 0; l < Traits::kLanes; ++l)
        result[l] = Traits::from_float(acc[l]);
}

template <typename T, int kLanes>
__device__ __forceinline__ void write_chunk(T* out, const T (&result)[kLanes], int64_t c, int64_t lanes, bool out_vec) {
    if (lanes == kLanes && out_vec) {
        uint4 packed;
        static_assert(sizeof(result) == sizeof(packed));
        memcpy(&packed, result, sizeof(packed));
        reinterpret_cast<uint4*>(out)[c] = packed;
    } else {
        for (int64_t l = 0; l < lanes; ++l)
            out[c * kLanes + l] = result[l];
    }
}

template <P2pElem E, int kRanks>
__global__ void __launch_bounds__(kP2pThreads) p2p_all_reduce_kernel(const P2pLaunchParams p) {
    using T = typename ElemTraits<E>::T;
    constexpr int kLanes = ElemTraits<E>::kLanes;
    P2pSignals* self = p.signals[p.rank];
    // Every thread reads the counter before the first __syncthreads; thread 0 writes it after the last one.
    const uint32_t epoch = self->epoch[blockIdx.x] + 1;
    const int64_t half = (epoch & 1u) != 0 ? p.staging_bytes : 0;
    const int64_t num_chunks = (p.count + kLanes - 1) / kLanes;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const T* in = static_cast<const T*>(p.in);                           // [count]
    T* out = static_cast<T*>(p.out);                                     // [count]
    uint4* staged = reinterpret_cast<uint4*>(p.staging[p.rank] + half);  // [num_chunks] 16-byte chunks
    const bool in_vec = (reinterpret_cast<uintptr_t>(in) & 15u) == 0;
    const bool out_vec = (reinterpret_cast<uintptr_t>(out) & 15u) == 0;

    // 1. Stage this block's chunks.
    for (int64_t c = first; c < num_chunks; c += stride) {
        const int64_t lanes = p.count - c * kLanes < kLanes ? p.count - c * kLanes : kLanes;
        stage_chunk<T, kLanes>(in, staged, c, lanes, in_vec);
    }

    // 2. Barrier: the __syncthreads orders every thread's staging stores before the release stores.
    __syncthreads();
    if (threadIdx.x < kRanks) {
        const int peer = static_cast<int>(threadIdx.x);
        store_release_sys(&p.signals[peer]->arrived[blockIdx.x][p.rank], epoch);
        wait_for_peer(p, &self->arrived[blockIdx.x][peer], peer, epoch);
    }
    __syncthreads();

    // 3. Sum the same chunks of all ranks.
    for (int64_t c = first; c < num_chunks; c += stride) {
        T result[kLanes];
        sum_chunk<E, kRanks>(p, half, c, result);
        const int64_t lanes = p.count - c * kLanes < kLanes ? p.count - c * kLanes : kLanes;
        write_chunk<T, kLanes>(out, result, c, lanes, out_vec);
    }
    if (threadIdx.x == 0) {
        self->epoch[blockIdx.x] = epoch;
    }
}

template <P2pElem E>
cudaError_t launch_for_elem(const P2pLaunchParams& p, cudaStream_t stream) {
    const dim3 grid(kP2pBlocks);
    const dim3 block(kP2pThreads);
    switch (p.world_size) {
        case 2:
            p2p_all_reduce_kernel<E, 2><<<grid, block, 0, stream>>>(p);
            break;
        case 3:
            p2p_all_reduce_kernel<E, 3><<<grid, block, 0, stream>>>(p);
            break;
        case 4:
            p2p_all_reduce_kernel<E, 4><<<grid, block, 0, stream>>>(p);
            break;
        case 5:
            p2p_all_reduce_kernel<E, 5><<<grid, block, 0, stream>>>(p);
            break;
        case 6:
            p2p_all_reduce_kernel<E, 6><<<grid, block, 0, stream>>>(p);
            break;
        case 7:
            p2p_all_reduce_kernel<E, 7><<<grid, block, 0, stream>>>(p);
            break;
        case 8:
            p2p_all_reduce_kernel<E, 8><<<grid, block, 0, stream>>>(p);
            break;
        default:
            return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_p2p_all_reduce(const P2pLaunchParams& params, P2pElem elem, cudaStream_t stream) {
    return elem == P2pElem::F32 ? launch_for_elem<P2pElem::F32>(params, stream)
                                : launch_for_elem<P2pElem::BF16>(params, stream);
}

}  // namespace k2::dist::detail

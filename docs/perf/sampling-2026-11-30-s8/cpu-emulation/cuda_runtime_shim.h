// CPU emulation shim of the few CUDA pieces kernels/sampling_filter.cuh uses (testing only; not part of k2).
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <bit>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
typedef struct CUstream_st* cudaStream_t;
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __shared__ static
struct Dim3Emu {
    unsigned x = 0, y = 0, z = 0;
};
inline thread_local Dim3Emu threadIdx;
inline thread_local Dim3Emu blockIdx;
using std::max;
using std::min;
inline std::barrier<>* g_block_barrier = nullptr;
struct WarpEmu {
    std::barrier<> bar{32};
    uint64_t buf[32];
};
inline WarpEmu* g_warps = nullptr;
inline void __syncthreads() {
    g_block_barrier->arrive_and_wait();
}
inline void __syncwarp(unsigned = 0xffffffffu) {
    g_warps[threadIdx.x / 32].bar.arrive_and_wait();
}
template <typename T>
T shfl_from(T v, int src) {
    WarpEmu& w = g_warps[threadIdx.x / 32];
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    w.buf[threadIdx.x % 32] = bits;
    w.bar.arrive_and_wait();
    T r;
    uint64_t got = w.buf[src];
    std::memcpy(&r, &got, sizeof(T));
    w.bar.arrive_and_wait();
    return r;
}
template <typename T>
T __shfl_sync(unsigned, T v, int src, int = 32) {
    return shfl_from(v, src);
}
template <typename T>
T __shfl_up_sync(unsigned, T v, int d, int = 32) {
    const int lane = static_cast<int>(threadIdx.x % 32);
    return shfl_from(v, lane - d < 0 ? lane : lane - d);
}
template <typename T>
T __shfl_xor_sync(unsigned, T v, int m, int = 32) {
    return shfl_from(v, static_cast<int>(threadIdx.x % 32) ^ m);
}
inline unsigned __ballot_sync(unsigned, bool pred) {
    WarpEmu& w = g_warps[threadIdx.x / 32];
    w.buf[threadIdx.x % 32] = pred ? 1 : 0;
    w.bar.arrive_and_wait();
    unsigned r = 0;
    for (int i = 0; i < 32; ++i)
        r |= static_cast<unsigned>(w.buf[i]) << i;
    w.bar.arrive_and_wait();
    return r;
}
inline uint32_t __float_as_uint(float v) {
    return std::bit_cast<uint32_t>(v);
}
inline float __uint_as_float(uint32_t v) {
    return std::bit_cast<float>(v);
}
inline float __int_as_float(int v) {
    return std::bit_cast<float>(v);
}
inline unsigned long long __double2ull_rn(double v) {
    return static_cast<unsigned long long>(std::nearbyint(v));
}
inline int __clz(int v) {
    return std::countl_zero(static_cast<uint32_t>(v));
}
inline int __ffs(int v) {
    return v == 0 ? 0 : std::countr_zero(static_cast<uint32_t>(v)) + 1;
}
inline int __popc(unsigned v) {
    return std::popcount(v);
}
template <typename T>
T atomicAdd(T* p, T v) {
    return std::atomic_ref<T>(*p).fetch_add(v);
}
inline int atomicMax(int* p, int v) {
    std::atomic_ref<int> a(*p);
    int old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}

// Warp-level building blocks shared by the bf16 mma.sync attention kernels (mla_decode.cuh, mla_attention.cuh):
// the XOR swizzle of shared tiles, ldmatrix loads, the m16n8k16 bf16 MMA, bf16 packing and e4m3 -> bf16 units.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace k2::cuda::kernels {

// Byte offset of 16-byte unit `unit` of row `row` in a swizzled tile (rows of row_bytes, units XORed by row % 8
// within groups of 8): ldmatrix's eight row addresses then hit eight different bank groups.
__device__ __forceinline__ uint32_t swz(int row, int unit, int row_bytes) {
    return static_cast<uint32_t>(row * row_bytes + ((unit & ~7) | ((unit ^ row) & 7)) * 16);
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t (&r)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t addr, uint32_t (&r)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return reinterpret_cast<const uint32_t&>(v);
}

__device__ __forceinline__ void st_shared_v4(uint32_t dst, const uint32_t (&w)[4]) {
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"(dst), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3])
                 : "memory");
}

// Two e4m3 codes (low byte first) as two bf16 (exact: e4m3 -> half -> float -> bf16 loses nothing).
__device__ __forceinline__ uint32_t fp8x2_to_bf16x2(uint32_t two) {
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two & 0xffffu), __NV_E4M3);
    const float2 f = __half22float2(__half2(h));
    return pack_bf16(f.x, f.y);
}

// 8 e4m3 codes (uint2, low byte first) as one 16-byte unit of bf16.
__device__ __forceinline__ void fp8x8_to_unit(uint2 raw, uint32_t (&w)[4]) {
    w[0] = fp8x2_to_bf16x2(raw.x);
    w[1] = fp8x2_to_bf16x2(raw.x >> 16);
    w[2] = fp8x2_to_bf16x2(raw.y);
    w[3] = fp8x2_to_bf16x2(raw.y >> 16);
}

}  // namespace k2::cuda::kernels

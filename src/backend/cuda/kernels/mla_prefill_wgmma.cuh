// Causal variable-length flash-attention forward of mla_prefill.h on Hopper's wgmma (FlashAttention-3's structure,
// sm_90a), selected by MlaPrefillParams::kernel. Design and measurements: docs/perf/mla-prefill-wgmma.md.
// - One CTA of 2 warpgroups per (head, 128-query tile of one sequence): warpgroup w owns query rows 64w..64w+63.
//   CTAs are issued heaviest first (the last query tiles of a causal sequence have the longest contexts), the query
//   tiles of a head next to each other in the grid (they stream the same K/V, so it is read from L2, not HBM).
// - Shared memory holds the Q tile [128 rows, 192] (loaded once) and 2-stage rings of K tiles [128 keys, 192]
//   (k_nope of this head | the shared k_pe) and V tiles [128 keys, 128], all as 64-column boxes of 128-byte rows in
//   the 128B-swizzle layout that wgmma's descriptors read (the bytes a TMA box with SWIZZLE_128B would write).
//   Loader threads copy tiles with 16-byte cp.async (keys past the CTA's last key are zero-filled, so the row bound
//   needs no tensor map: MlaPrefillParams carries no context length) and signal a `full` mbarrier with
//   cp.async.mbarrier.arrive.noinc; each warp arrives on an `empty` mbarrier once its warpgroup's MMAs are done.
// - Per tile and warpgroup: S = Q K^T (12 x wgmma m64n128k16, both operands from shared memory, K-major), the
//   causal mask only on tiles that reach past the warpgroup's first row, online softmax in registers (exp2 domain),
//   P rounded to bf16 straight from the S accumulator registers (their layout is wgmma's register-A fragment layout)
//   and O += P V (8 x wgmma m64n128k16 with A from registers, V as the MN-major ("transposed") B operand). P V of
//   tile t - 1 and Q K^T of tile t are issued as one batch with one wait (see the kernel's schedule comment).
// - kPingPong: the two warpgroups take turns issuing their batches (named barriers 1 and 2), so that one
//   warpgroup's softmax runs while the other's MMAs keep the tensor cores busy (FA3's inter-warpgroup overlap);
//   kSplit: the exp2 part of the softmax overlaps the previous P V. Both measured slower than lockstep (the default):
//   H200, 8192 causal tokens, 64 heads: lockstep 2.81 ms = 488 TFLOP/s, mma.sync kernel 6.49 ms.
#pragma once

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "backend/cuda/kernels/sm90_ptx.cuh"
#include "backend/cuda/mla_prefill.h"

namespace k2::cuda::kernels::mla_prefill_wgmma {

inline constexpr int kRowsQ = 128;  // query rows per CTA: 2 warpgroups x 64
inline constexpr int kKeys = 128;   // keys per tile (the N of the S GEMM, the K of the P.V GEMM)
inline constexpr int kThreads = 256;
inline constexpr int kDqk = kMlaPrefillNope + kMlaPrefillRope;  // 192
inline constexpr int kDv = kMlaPrefillDv;                       // 128
inline constexpr int kQBytes = kRowsQ * kDqk * 2;               // 48 KB: 3 boxes [128 rows, 64]
inline constexpr int kKBytes = kKeys * kDqk * 2;                // 48 KB: 3 boxes [128 keys, 64]
inline constexpr int kVBytes = kKeys * kDv * 2;                 // 32 KB: 2 boxes [128 keys, 64]
inline constexpr int kKBoxBytes = kKeys * 128;                  // 16 KB
inline constexpr int kQBoxBytes = kRowsQ * 128;                 // 16 KB
inline constexpr int kStages = 2;
inline constexpr int kSmemBytes = kQBytes + kStages * (kKBytes + kVBytes) + 1024;  // + slack to align to 1024
static_assert(kSmemBytes <= 227 * 1024, "shared memory over the sm_90 limit");

// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` inside a 128B-swizzled box (1024-byte aligned).
__device__ __forceinline__ uint32_t sw128(int row, int chunk) {
    return static_cast<uint32_t>(row * 128 + ((chunk ^ (row & 7)) << 4));
}

// cp.async.mbarrier.arrive.noinc: arrives on bar once this thread's earlier cp.async copies have landed, counting as
// one of the arrivals the barrier was initialized with. (New wrapper; candidate for sm90_ptx.cuh.)
__device__ __forceinline__ void cp_async_mbar_arrive_noinc(uint64_t* bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(sm90::smem_addr(bar)) : "memory");
}

using sm90::named_bar_arrive;
using sm90::named_bar_sync;
using sm90::smem_desc_sw128_mn;

#define K2_WGMMA_ACC64                                                                                          \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), \
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),  \
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), \
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), \
        "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), \
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), \
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), \
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

#define K2_WGMMA_D64                                                                                       \
    "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,"  \
    "%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51," \
    "%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}"

// d[64] (+)= A B, wgmma.m64n128k16 bf16 -> f32, A and B K-major in shared memory; scale_d = 0 overwrites d.
__device__ __forceinline__ void wgmma_ss_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " K2_WGMMA_D64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
        : K2_WGMMA_ACC64
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// d[64] += A B, wgmma.m64n128k16 bf16 -> f32, A (4 registers of bf16 pairs, the m16n8k16-style fragment of each
// warp's 16 rows) from registers, B MN-major in shared memory (imm-trans-b = 1).
__device__ __forceinline__ void wgmma_rs_m64n128k16_tb(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " K2_WGMMA_D64
        ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : K2_WGMMA_ACC64
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}

#undef K2_WGMMA_D64
#undef K2_WGMMA_ACC64

// Keeps the P registers alive (unchanged) until the asynchronous MMA that reads them has been waited for.
__device__ __forceinline__ void fence_p(uint32_t (&p)[kKeys / 16][4]) {
#pragma unroll
    for (int k = 0; k < kKeys / 16; ++k) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            asm volatile("" : "+r"(p[k][i])::"memory");
        }
    }
}

__device__ __forceinline__ float fast_exp2(float x) {  // ex2.approx: exp2(-inf) = +0
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return reinterpret_cast<const uint32_t&>(v);
}

// Where a CTA works: its rows and the keys it needs (CTA-uniform).
struct Work {
    int head;
    int q_begin;  // first query token of the sequence
    int q_len;
    int k_begin;  // first context token of the sequence
    int offset;   // position of query row i is offset + i
    int m0;       // first query row of the CTA within the sequence
    int key_end;  // the CTA needs keys [0, key_end)
    int num_tiles;
};

// Loader `lt` of kLoaders copies 128 rows of kBoxes 64-column boxes ([128, 64] bf16 each, 128B-swizzled, kBoxBytes
// apart) from src[b] + row * stride[b]: 16-byte chunk lt % 8 of rows lt / 8 + k * (kLoaders / 8). All its rows share
// row % 8, so its swizzled chunk is fixed and the addresses advance by constants (few registers: the loads run
// while the MMAs hold 160 registers). Rows >= valid_rows are zero-filled, never read.
template <int kLoaders, int kBoxes>
__device__ __forceinline__ void load_boxes(uint8_t* dst, const uint16_t* const (&src)[kBoxes],
                                           const int64_t (&stride)[kBoxes], int valid_rows, const uint16_t* dummy,
                                           int lt) {
    constexpr int kRowStep = kLoaders / 8;
    static_assert(kLoaders % 8 == 0 && 128 % kRowStep == 0, "loaders must tile the 128 rows");
    const int chunk = lt % 8;
    const int r0 = lt / 8;
    uint8_t* dst0 = dst + sw128(r0, chunk);
#pragma unroll
    for (int k = 0; k < 128 / kRowStep; ++k) {
        const int row = r0 + k * kRowStep;
        const bool valid = row < valid_rows;
#pragma unroll
        for (int b = 0; b < kBoxes; ++b) {
            const uint16_t* from = src[b] + row * stride[b] + chunk * 8;
            sm90::cp_async16_zfill(dst0 + b * 128 * 128 + k * kRowStep * 128, valid ? from : dummy, valid ? 16 : 0);
        }
    }
}

// Key tile `tile`: K = [k_nope (2 boxes) | k_pe (1 box)] rows into k_smem, or V rows (2 boxes) into v_smem; keys past
// key_end zero-filled.
template <int kLoaders>
__device__ __forceinline__ void load_k_tile(const MlaPrefillParams& p, const Work& w, uint8_t* k_smem, int tile,
                                            int lt) {
    const int64_t ctx0 = int64_t{w.k_begin} + int64_t{tile} * kKeys;
    const uint16_t* k_head = p.k_nope + ctx0 * p.kv_stride + int64_t{w.head} * p.kv_head_stride;
    const uint16_t* const src[3] = {k_head, k_head + 64, p.k_pe + ctx0 * p.k_pe_stride};
    const int64_t stride[3] = {p.kv_stride, p.kv_stride, p.k_pe_stride};
    load_boxes<kLoaders, 3>(k_smem, src, stride, w.key_end - tile * kKeys, p.k_pe, lt);
}

template <int kLoaders>
__device__ __forceinline__ void load_v_tile(const MlaPrefillParams& p, const Work& w, uint8_t* v_smem, int tile,
                                            int lt) {
    const int64_t ctx0 = int64_t{w.k_begin} + int64_t{tile} * kKeys;
    const uint16_t* v_head = p.v + ctx0 * p.kv_stride + int64_t{w.head} * p.kv_head_stride;
    const uint16_t* const src[2] = {v_head, v_head + 64};
    const int64_t stride[2] = {p.kv_stride, p.kv_stride};
    load_boxes<kLoaders, 2>(v_smem, src, stride, w.key_end - tile * kKeys, p.v, lt);
}

// The Q tile [128 rows, 192] (rows past q_len zero-filled).
template <int kLoaders>
__device__ __forceinline__ void load_q_tile(const MlaPrefillParams& p, const Work& w, uint8_t* q_smem, int lt) {
    const uint16_t* q0 = p.q + (int64_t{w.q_begin} + w.m0) * p.q_stride + int64_t{w.head} * kDqk;
    const uint16_t* const src[3] = {q0, q0 + 64, q0 + 128};
    const int64_t stride[3] = {p.q_stride, p.q_stride, p.q_stride};
    load_boxes<kLoaders, 3>(q_smem, src, stride, w.q_len - w.m0, p.q, lt);
}

// Online-softmax state of this thread's two rows (g and g + 8 of its warp's 16).
struct SoftmaxRows {
    float max[2];  // raw score units (the scale is applied inside the exp2)
    float sum[2];  // this thread's columns only; the quad's partial sums are added at the end
};

// Softmax, part 1 (needs S only): S (this warpgroup's 64 x 128 scores, accumulator layout) -> exp2 values in place,
// running max and sum updated; returns in corr[r] the factor by which O must be rescaled. limit[r]: last usable key
// position of row r (-1: none); `mask` only on tiles that cross the diagonal.
__device__ __forceinline__ void softmax_exp(float (&s)[64], float (&corr)[2], SoftmaxRows& st, const int (&limit)[2],
                                            int key0, bool mask, float scale_log2, int quad_lane) {
    if (mask) {
#pragma unroll
        for (int i = 0; i < kKeys / 8; ++i) {
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int key = key0 + 8 * i + 2 * quad_lane + (c & 1);
                if (key > limit[c / 2])
                    s[4 * i + c] = -INFINITY;
            }
        }
    }
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int i = 0; i < kKeys / 8; ++i) {
#pragma unroll
        for (int c = 0; c < 4; ++c)
            tile_max[c / 2] = fmaxf(tile_max[c / 2], s[4 * i + c]);
    }
    float base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
        const float new_max = fmaxf(st.max[r], tile_max[r]);
        // A row with no usable key yet (new_max = -inf) keeps O = 0, l = 0: no NaN from -inf - -inf.
        corr[r] = new_max == -INFINITY ? 1.0f : fast_exp2((st.max[r] - new_max) * scale_log2);
        base[r] = new_max == -INFINITY ? 0.0f : new_max * scale_log2;
        st.max[r] = new_max;
    }
    float tile_sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < kKeys / 8; ++i) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            s[4 * i + c] = fast_exp2(fmaf(s[4 * i + c], scale_log2, -base[c / 2]));
            tile_sum[c / 2] += s[4 * i + c];
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r)
        st.sum[r] = st.sum[r] * corr[r] + tile_sum[r];
}

// Softmax, part 2 (needs the previous P V to be complete): O *= corr, P = the exp2 values as bf16 A fragments.
__device__ __forceinline__ void softmax_finish(const float (&s)[64], float (&o)[64], uint32_t (&pf)[kKeys / 16][4],
                                               const float (&corr)[2]) {
#pragma unroll
    for (int i = 0; i < kKeys / 8; ++i) {
        // n8 block i = keys 8i..8i+7: k16 step i / 2, registers {0, 1} (i even) or {2, 3} (i odd); row g then g + 8.
        pf[i / 2][(i % 2) * 2] = pack_bf16x2(s[4 * i], s[4 * i + 1]);
        pf[i / 2][(i % 2) * 2 + 1] = pack_bf16x2(s[4 * i + 2], s[4 * i + 3]);
    }
#pragma unroll
    for (int i = 0; i < kDv / 8; ++i) {
        o[4 * i + 0] *= corr[0];
        o[4 * i + 1] *= corr[0];
        o[4 * i + 2] *= corr[1];
        o[4 * i + 3] *= corr[1];
    }
}

// Normalizes and stores this thread's two rows of O (rows past q_len are not written).
__device__ __forceinline__ void store_rows(const MlaPrefillParams& p, const Work& w, const float (&o)[64],
                                           const SoftmaxRows& st, int row_in_cta, int quad_lane) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float total = st.sum[r];
        total += __shfl_xor_sync(0xffffffffu, total, 1);
        total += __shfl_xor_sync(0xffffffffu, total, 2);
        const int row = w.m0 + row_in_cta + 8 * r;
        if (row >= w.q_len)
            continue;
        const float inv = total > 0.0f ? 1.0f / total : 0.0f;  // no key at all (q_len > k_len): zeros
        uint16_t* dst = p.out + (int64_t{w.q_begin} + row) * p.out_stride + int64_t{w.head} * kDv + quad_lane * 2;
#pragma unroll
        for (int i = 0; i < kDv / 8; ++i) {
            *reinterpret_cast<uint32_t*>(dst + 8 * i) = pack_bf16x2(o[4 * i + 2 * r] * inv, o[4 * i + 2 * r + 1] * inv);
        }
    }
}

// Issues batch t of a warpgroup: O += P_{t-1} V_{t-1} (pv: t >= 1; P from registers) and S = Q K_t^T (qk: t < n).
// kSplit: S first and in its own commit group (so that S can be waited for while P V still runs), else P V first.
__device__ __forceinline__ void issue_pv(float (&o)[64], const uint32_t (&pf)[kKeys / 16][4], const uint8_t* v_smem) {
    // k16 step kk = keys 16kk..16kk+15 = rows 16kk.. of both V boxes (LBO = one box apart).
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
        wgmma_rs_m64n128k16_tb(o, pf[kk], smem_desc_sw128_mn(v_smem + kk * 16 * 128, kKBoxBytes));
    }
}

__device__ __forceinline__ void issue_qk(float (&s)[64], const uint8_t* q_wg, const uint8_t* k_smem) {
    // k16 step j reads 32 bytes into the rows of box j / 4 (the swizzle is applied on the address bits).
#pragma unroll
    for (int j = 0; j < kDqk / 16; ++j) {
        const int box = j / 4;
        const int byte = 32 * (j % 4);
        wgmma_ss_m64n128k16(s, sm90::smem_desc_sw128(q_wg + box * kQBoxBytes + byte),
                            sm90::smem_desc_sw128(k_smem + box * kKBoxBytes + byte), j);
    }
}

template <bool kSplit>
__device__ __forceinline__ void issue_batch(float (&s)[64], float (&o)[64], const uint32_t (&pf)[kKeys / 16][4],
                                            const uint8_t* q_wg, const uint8_t* k_smem, const uint8_t* v_smem, bool pv,
                                            bool qk) {
    sm90::fence_registers(o);
    sm90::fence_registers(s);
    sm90::wgmma_fence();
    if (kSplit) {
        if (qk) {
            issue_qk(s, q_wg, k_smem);
            sm90::wgmma_commit();
        }
        if (pv) {
            issue_pv(o, pf, v_smem);
            sm90::wgmma_commit();
        }
    } else {
        if (pv)
            issue_pv(o, pf, v_smem);
        if (qk)
            issue_qk(s, q_wg, k_smem);
        sm90::wgmma_commit();
    }
}

// grid: [ceil(max_q_len / 128), heads, num_seqs] (kTilesInner) or [heads, ceil(max_q_len / 128), num_seqs], block:
// 256, dynamic shared memory kSmemBytes. Schedule (n key tiles): "group" g = the tiles K_g and V_{g-1} (group 0: Q and
// K_0), "batch" t = the MMAs P_{t-1} V_{t-1} and Q K_t^T of one warpgroup (t = 0..n), issued together with one wait.
// During batch t the loaders copy group t + 1 into the stages that batch t - 1 read (K ring: K_{t-1}; V ring: V_{t-2}),
// once both warpgroups have finished batch t - 1 (`empty`); batch t waits for group t (`full`). Lockstep: all 256
// threads load. kPingPong: warpgroup 0 loads alone, so that a group never waits for the warpgroup that issues second.
// kSplit: Q K_t^T is issued first and waited for alone, and the exp2 part of the softmax runs while P_{t-1} V_{t-1}
// is still on the tensor cores (FA3's intra-warpgroup overlap, without a second S buffer: the exp2 values stay in S's
// registers until the P V is done and they can be packed into P's).
// kTilesInner: grid [q tiles, heads, sequences] (the CTAs resident together are the query tiles of one or two heads,
// which stream the same K/V: L2 hits), else [heads, q tiles, sequences] (the mma.sync kernel's order).
template <bool kPingPong, bool kSplit, bool kTilesInner>
__global__ void __launch_bounds__(kThreads, 1) mla_prefill_wgmma_kernel(const __grid_constant__ MlaPrefillParams p) {
    constexpr int kLoaders = kPingPong ? 128 : kThreads;
    extern __shared__ uint8_t smem_raw[];
    __shared__ uint64_t full_bar[kStages];   // every loader's copies of a group landed (count kLoaders)
    __shared__ uint64_t empty_bar[kStages];  // every warp waited for its batch (count 8)
    uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
    uint8_t* q_smem = smem;                        // 3 boxes [128 rows, 64] bf16
    uint8_t* k_ring = smem + kQBytes;              // kStages x 3 boxes [128 keys, 64]
    uint8_t* v_ring = k_ring + kStages * kKBytes;  // kStages x 2 boxes [128 keys, 64]

    Work w;
    w.head = static_cast<int>(kTilesInner ? blockIdx.y : blockIdx.x);
    const int seq = static_cast<int>(blockIdx.z);
    w.q_begin = p.cu_seqlens_q[seq];
    w.q_len = p.cu_seqlens_q[seq + 1] - w.q_begin;
    const int q_tiles = static_cast<int>(kTilesInner ? gridDim.x : gridDim.y);
    const int q_tile = static_cast<int>(kTilesInner ? blockIdx.x : blockIdx.y);
    w.m0 = (q_tiles - 1 - q_tile) * kRowsQ;  // heaviest first
    if (w.m0 >= w.q_len) {
        return;  // uniform over the CTA
    }
    w.k_begin = p.cu_seqlens_k[seq];
    const int k_len = p.cu_seqlens_k[seq + 1] - w.k_begin;
    w.offset = k_len - w.q_len;
    const int last_row = min(w.m0 + kRowsQ, w.q_len) - 1;
    w.key_end = max(0, min(k_len, w.offset + last_row + 1));
    w.num_tiles = (w.key_end + kKeys - 1) / kKeys;
    const int n = w.num_tiles;

    const int tid = static_cast<int>(threadIdx.x);
    const int warp = tid / 32;
    const int lane = tid % 32;
    const int wg = warp / 4;
    const int quad_lane = lane & 3;
    const bool loader = tid < kLoaders;
    const int row_in_cta = 64 * wg + 16 * (warp % 4) + (lane >> 2);  // this thread's rows: row_in_cta, + 8
    int limit[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = w.m0 + row_in_cta + 8 * r;
        limit[r] = row < w.q_len ? w.offset + row : -1;
    }
    const int wg_first_pos = w.offset + w.m0 + 64 * wg;  // position of the warpgroup's first row
    const float scale_log2 = p.softmax_scale * 1.4426950408889634f;
    const uint8_t* q_wg = q_smem + wg * 64 * 128;  // this warpgroup's 64 rows in each Q box

    if (tid == 0) {
#pragma unroll
        for (int i = 0; i < kStages; ++i) {
            sm90::mbar_init(&full_bar[i], kLoaders);
            sm90::mbar_init(&empty_bar[i], kThreads / 32);
        }
        sm90::fence_mbarrier_init();
    }
    __syncthreads();

    float o[64];
    float s[64];
    uint32_t pf[kKeys / 16][4];
#pragma unroll
    for (int i = 0; i < 64; ++i) {
        o[i] = 0.0f;
        s[i] = 0.0f;
    }
#pragma unroll
    for (int k = 0; k < kKeys / 16; ++k) {
        pf[k][0] = pf[k][1] = pf[k][2] = pf[k][3] = 0u;
    }
    SoftmaxRows st;
    st.max[0] = st.max[1] = -INFINITY;
    st.sum[0] = st.sum[1] = 0.0f;

    if (n > 0) {
        if (loader) {
            load_q_tile<kLoaders>(p, w, q_smem, tid);
            load_k_tile<kLoaders>(p, w, k_ring, 0, tid);
            cp_async_mbar_arrive_noinc(&full_bar[0]);  // group 0
        }
        if (kPingPong && wg == 1)
            named_bar_arrive(1, kThreads);  // warpgroup 0 issues first
    }
    // Group t + 1 (K_{t+1}, V_t) into the stages that batch t - 1 read, once both warpgroups are done with it;
    // issued while batch t runs.
    auto load_group = [&](int t) {
        if (loader) {
            if (t >= 1)
                sm90::mbar_wait(&empty_bar[(t - 1) & 1], ((t - 1) >> 1) & 1);
            if (t + 1 < n)
                load_k_tile<kLoaders>(p, w, k_ring + ((t + 1) & 1) * kKBytes, t + 1, tid);
            load_v_tile<kLoaders>(p, w, v_ring + (t & 1) * kVBytes, t, tid);
            cp_async_mbar_arrive_noinc(&full_bar[(t + 1) & 1]);
        }
    };
    auto wait_group = [&](int t) {
        sm90::mbar_wait(&full_bar[t & 1], (t >> 1) & 1);
        sm90::fence_proxy_async();  // the cp.async (generic proxy) bytes, read next by wgmma (async proxy)
    };
    if constexpr (kSplit) {
        // Peeled so that the steady loop has no branch around its MMAs (ptxas serializes wgmma otherwise).
        if (n > 0) {
            float corr[2];
            wait_group(0);
            issue_batch<true>(s, o, pf, q_wg, k_ring, v_ring, false, true);
            load_group(0);
            sm90::wgmma_wait<0>();
            sm90::fence_registers(s);
            __syncwarp();
            if (lane == 0)
                sm90::mbar_arrive(&empty_bar[0]);
            softmax_exp(s, corr, st, limit, 0, kKeys - 1 > wg_first_pos, scale_log2, quad_lane);
            softmax_finish(s, o, pf, corr);
            for (int t = 1; t < n; ++t) {
                wait_group(t);
                sm90::fence_registers(o);
                sm90::fence_registers(s);
                sm90::wgmma_fence();
                issue_qk(s, q_wg, k_ring + (t & 1) * kKBytes);
                sm90::wgmma_commit();
                issue_pv(o, pf, v_ring + ((t + 1) & 1) * kVBytes);
                sm90::wgmma_commit();
                load_group(t);
                sm90::wgmma_wait<1>();  // S_t; P_{t-1} V_{t-1} may still run
                sm90::fence_registers(s);
                const int key0 = t * kKeys;
                softmax_exp(s, corr, st, limit, key0, key0 + kKeys - 1 > wg_first_pos, scale_log2, quad_lane);
                sm90::wgmma_wait<0>();
                sm90::fence_registers(o);
                fence_p(pf);
                __syncwarp();
                if (lane == 0)
                    sm90::mbar_arrive(&empty_bar[t & 1]);
                softmax_finish(s, o, pf, corr);
            }
            wait_group(n);
            issue_batch<true>(s, o, pf, q_wg, k_ring, v_ring + ((n + 1) & 1) * kVBytes, true, false);
            sm90::wgmma_wait<0>();
            sm90::fence_registers(o);
            fence_p(pf);
        }
    } else {
        const int my_bar = 1 + wg;
        const int other_bar = 2 - wg;
        for (int t = 0; n > 0 && t <= n; ++t) {
            wait_group(t);
            if (kPingPong)
                named_bar_sync(my_bar, kThreads);
            issue_batch<false>(s, o, pf, q_wg, k_ring + (t & 1) * kKBytes, v_ring + ((t + 1) & 1) * kVBytes, t >= 1,
                               t < n);
            if (kPingPong)
                named_bar_arrive(other_bar, kThreads);
            if (t < n)
                load_group(t);
            sm90::wgmma_wait<0>();
            sm90::fence_registers(s);
            sm90::fence_registers(o);
            fence_p(pf);
            if (t < n) {
                __syncwarp();
                if (lane == 0)
                    sm90::mbar_arrive(&empty_bar[t & 1]);
                const int key0 = t * kKeys;
                float corr[2];
                softmax_exp(s, corr, st, limit, key0, key0 + kKeys - 1 > wg_first_pos, scale_log2, quad_lane);
                softmax_finish(s, o, pf, corr);
            }
        }
    }
    if (kPingPong && n > 0 && wg == 0)
        named_bar_sync(1, kThreads);  // warpgroup 1's last arrive
    asm volatile("cp.async.wait_all;" ::: "memory");

    store_rows(p, w, o, st, row_in_cta, quad_lane);
}

}  // namespace k2::cuda::kernels::mla_prefill_wgmma

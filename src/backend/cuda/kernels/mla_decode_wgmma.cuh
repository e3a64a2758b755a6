// MLA decode split kernels on wgmma (sm_90a): the same function and workspace as mla_decode.cuh's mma.sync kernel
// (mla_decode.h), built for bandwidth. One CTA of 2 warpgroups (256 threads) per (split, sequence, 64-head group):
// - Q [64, 576] bf16 is loaded once into shared memory (cp.async) as 9 column boxes of [64, 64] in the 128B-swizzle
//   layout (missing heads of a partial group are zero rows).
// - Pages go into two bf16 page tiles (the same 9-box layout). BF16 cache: thread 0 issues 9 TMA boxes of
//   [64 tokens, 64 columns] per page from a [rows, 576] tensor map over the whole cache, completing on the tile's
//   mbarrier; the tile is refilled once both warpgroups are done with it. FP8 cache: every thread loads its 144
//   bytes of page i + 1 into registers while page i is computed and converts them (exact: e4m3 fits bf16) into the
//   other tile while page i's P.V runs on the tensor cores. Optionally (l2_ahead > 0, off by default: measured
//   slower) pages further ahead are bulk-prefetched into L2.
// - Warpgroup w computes S [64 heads, 32 tokens] = Q K^T for tokens 32 w.. (wgmma m64n32k16, 36 k steps, both
//   operands K-major from shared memory); the two warpgroups agree on the row maxima through shared memory, write
//   P (bf16) into one [64, 64] swizzled tile, and each does O[:, 256 w..] += P V (wgmma m64n256k16 with V = the
//   page's first 512 columns as an MN-major ("transposed") B operand, 128 f32 accumulators per thread).
// - Rows past seq_len in a sequence's last page are zeros in shared memory (the cache may hold NaN there) and masked
//   to -inf in S. FP8: kv_scale multiplies the scores and the output.
// - Combine: unnormalized O and (max, sum) per split into the workspace and mla_decode_wgmma_combine_kernel
//   (launched as a programmatic dependent of the split kernel), or (kCluster, num_splits <= 2) the splits of a
//   sequence form one thread-block cluster and combine through distributed shared memory straight into the output
//   (mla_wg_cluster_combine). The output is f32 (`out`) or bf16 (`out_bf16`).
// - mla_decode_wgmma_fp8_staged.cuh holds an FP8 variant fed by bulk copies (K2_MLA_WG_FP8=staged, slower).
// Design notes, prediction and measurements: docs/perf/mla-decode-wgmma.md.
#pragma once

#include <cooperative_groups.h>
#include <cuda.h>
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "backend/cuda/kernels/sm90_ptx.cuh"
#include "backend/cuda/kernels/warp_mma.cuh"
#include "backend/cuda/mla_decode.h"

namespace k2::cuda::kernels {

inline constexpr int kMlaWgThreads = 256;                                       // two warpgroups
inline constexpr int kMlaWgBoxBytes = 64 * 128;                                 // [64 rows, 64 bf16] swizzled box
inline constexpr int kMlaWgBoxes = kMlaEntry / 64;                              // 9 boxes per 576-column tile
inline constexpr int kMlaWgTileBytes = kMlaWgBoxes * kMlaWgBoxBytes;            // 73,728
inline constexpr int kMlaWgFp8PageBytes = kMlaPageTokens * kMlaEntry;           // 36,864 e4m3 codes
inline constexpr int kMlaWgFp8Units = kMlaWgFp8PageBytes / 16 / kMlaWgThreads;  // 9 16-byte units per thread
// Shared memory (offsets from a 1024-aligned base): Q tile | 2 page tiles | P [64, 64] bf16 | row maxima [2][64]
// f32 | 4 mbarriers (BF16 only).
inline constexpr int kMlaWgRingOffset = kMlaWgTileBytes;
inline constexpr int kMlaWgPOffset = kMlaWgRingOffset + 2 * kMlaWgTileBytes;
inline constexpr int kMlaWgRedOffset = kMlaWgPOffset + 64 * 128;
inline constexpr int kMlaWgBarOffset = kMlaWgRedOffset + 2 * 64 * 4;
inline constexpr int kMlaWgSmemBytes = kMlaWgBarOffset + 4 * 8 + 1024;  // + alignment slack: 230,944
static_assert(kMlaWgFp8Units * 16 * kMlaWgThreads == kMlaWgFp8PageBytes, "FP8 page split over the threads");
// Cluster combine: each CTA's weighted O [64, 512] f32 in the (then free) tiles, rows padded by 4 floats against bank
// conflicts.
inline constexpr int kMlaWgStageStride = kMlaLatent + 4;
static_assert(64 * kMlaWgStageStride * 4 <= 2 * kMlaWgTileBytes, "the combine stage must fit the two tiles");

// Named barrier 1 over the two warpgroups (all threads of the CTA).
__device__ __forceinline__ void mla_wg_sync() {
    sm90::named_bar_sync(1, kMlaWgThreads);
}

// Bulk prefetch of `bytes` (a multiple of 16) at src into L2; nothing waits for it.
__device__ __forceinline__ void mla_wg_prefetch_l2(const void* src, uint32_t bytes) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(reinterpret_cast<uint64_t>(src)), "r"(bytes)
                 : "memory");
}

// 16 bytes of read-only global memory, not kept in L1 (each byte is read once).
__device__ __forceinline__ uint4 mla_wg_ld_stream(const void* src) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(reinterpret_cast<uint64_t>(src)));
    return v;
}

// Byte offset of element (row, col) of a [rows, 64] bf16 box in the 128B-swizzle layout (box 1024-aligned): the
// 16-byte chunk index is XORed with row % 8, which is what TMA writes and wgmma reads.
__device__ __forceinline__ uint32_t mla_wg_sw128(int row, int col) {
    return static_cast<uint32_t>(row * 128 + (((col >> 3) ^ (row & 7)) << 4) + (col & 7) * 2);
}

// S tile: wgmma.m64n32k16 bf16 x bf16 -> f32, A and B K-major from shared memory; scale_d = 0 overwrites d.
__device__ __forceinline__ void mla_wgmma_m64n32k16(float (&d)[16], uint64_t desc_a, uint64_t desc_b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {"
        "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15"
        "}, %16, %17, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
          "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// P.V: wgmma.m64n256k16 bf16 x bf16 -> f32, A K-major, B MN-major (imm-trans-b = 1), both from shared memory.
__device__ __forceinline__ void mla_wgmma_m64n256k16_bt(float (&d)[128], uint64_t desc_a, uint64_t desc_b,
                                                        int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
        "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,"
        "%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,"
        "%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,"
        "%77,%78,%79,%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,%96,%97,%98,%99,%100,"
        "%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,%112,%113,%114,%115,%116,%117,%118,%119,%120,"
        "%121,%122,%123,%124,%125,%126,%127"
        "}, %128, %129, p, 1, 1, 0, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
          "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
          "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
          "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),
          "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
          "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
          "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
          "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]),
          "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]),
          "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]),
          "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]),
          "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]),
          "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]),
          "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]),
          "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]),
          "+f"(d[126]), "+f"(d[127])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// The split's share of one sequence: its pages [page_begin, page_begin + num_local).
struct MlaWgWork {
    int seq_len;
    int page_begin;
    int num_local;
    const int32_t* block_table;  // [max_blocks_per_seq] of this sequence
};

__device__ __forceinline__ MlaWgWork mla_wg_work(const MlaDecodeParams& p, int64_t seq, int split, int num_splits,
                                                 int pages_per_split) {
    MlaWgWork w;
    w.seq_len = p.seq_lens[seq];
    const int num_pages = (w.seq_len + kMlaPageTokens - 1) / kMlaPageTokens;
    // As the mma.sync kernel: each sequence spreads its own pages over the splits (seq_lens is read here, never on
    // the host, so a launch captured in a CUDA graph for max_seq_len keeps every split busy on shorter contexts).
    const int seq_pages_per_split = min(pages_per_split, (num_pages + num_splits - 1) / num_splits);
    w.page_begin = split * seq_pages_per_split;
    w.num_local = max(0, min(num_pages, w.page_begin + seq_pages_per_split) - w.page_begin);
    w.block_table = p.block_tables + seq * p.max_blocks_per_seq;
    return w;
}

// Where this thread sits in the accumulator fragments: warpgroup, rows wrow + g and wrow + g + 8, columns
// 8 j + 2 quad (+1).
struct MlaWgLane {
    int wg;
    int g;
    int quad;
    int wrow;
};

__device__ __forceinline__ MlaWgLane mla_wg_lane() {
    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int lane = static_cast<int>(threadIdx.x) % 32;
    return MlaWgLane{warp / 4, lane / 4, lane % 4, (warp % 4) * 16};
}

// Q [64 heads, 576] of (seq, head0) into the 9 swizzled boxes by cp.async (all 18 copies of a thread in flight at
// once: a load-then-store loop here cost ~10 µs per CTA in latency); heads past num_heads are zero rows. The caller
// waits (cp_async_wait<0>, fence_proxy_async, barrier).
__device__ __forceinline__ void mla_wg_load_q(uint8_t* q_tile, const uint16_t* q, int valid_rows) {
    constexpr int kUnitsPerRow = kMlaEntry / 8;  // 72 chunks of 8 bf16
#pragma unroll 6
    for (int unit = static_cast<int>(threadIdx.x); unit < 64 * kUnitsPerRow; unit += kMlaWgThreads) {
        const int row = unit / kUnitsPerRow;
        const int u = unit % kUnitsPerRow;
        const bool valid = row < valid_rows;
        sm90::cp_async16_zfill(q_tile + (u / 8) * kMlaWgBoxBytes + row * 128 + (((u & 7) ^ (row & 7)) << 4),
                               q + (valid ? row * kMlaEntry + u * 8 : 0), valid ? 16 : 0);
    }
    sm90::cp_async_commit();
}

// S [64 heads, 32 tokens] = Q K^T over the 576 columns (9 boxes x 4 k16 steps of 32 bytes); k_rows = the tile's
// first row of this warpgroup's 32 tokens.
__device__ __forceinline__ void mla_wg_scores(float (&s)[16], const uint8_t* q_tile, const uint8_t* k_rows) {
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kMlaEntry / 16; ++kk) {
        const int offset = (kk / 4) * kMlaWgBoxBytes + (kk % 4) * 32;
        mla_wgmma_m64n32k16(s, sm90::smem_desc_sw128(q_tile + offset), sm90::smem_desc_sw128(k_rows + offset),
                            kk > 0 ? 1 : 0);
    }
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>();
    sm90::fence_registers(s);
}

// Online softmax of one page in the exp2 domain (tokens >= valid are -inf): the two warpgroups' row maxima meet in
// `red`, P (bf16) goes into p_tile, O is rescaled. Two barriers: after the maxima (which also orders the previous
// page's P.V reads of p_tile before the new P), and after P. s[4 j + c]: row wrow + g + 8 (c / 2), token
// 32 wg + 8 j + 2 quad + (c % 2).
__device__ __forceinline__ void mla_wg_softmax(float (&s)[16], float (&o)[128], float (&row_max)[2],
                                               float (&row_sum)[2], const MlaWgLane& l, int valid, float scale_log2,
                                               float* red, uint8_t* p_tile) {
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int token = l.wg * 32 + j * 8 + l.quad * 2 + (c & 1);
            s[4 * j + c] = token < valid ? s[4 * j + c] * scale_log2 : -INFINITY;
            tile_max[c / 2] = fmaxf(tile_max[c / 2], s[4 * j + c]);
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
    }
    if (l.quad == 0) {
        red[l.wg * 64 + l.wrow + l.g] = tile_max[0];
        red[l.wg * 64 + l.wrow + l.g + 8] = tile_max[1];
    }
    mla_wg_sync();
    float corr[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float other = red[(l.wg ^ 1) * 64 + l.wrow + l.g + 8 * r];
        const float new_max = fmaxf(row_max[r], fmaxf(tile_max[r], other));  // finite: token 0 is always valid
        corr[r] = exp2f(row_max[r] - new_max);                               // 0 on the first page
        row_max[r] = new_max;
    }
    float tile_sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            s[4 * j + c] = exp2f(s[4 * j + c] - row_max[c / 2]);
            tile_sum[c / 2] += s[4 * j + c];
        }
        const int token = l.wg * 32 + j * 8 + l.quad * 2;
        *reinterpret_cast<uint32_t*>(p_tile + mla_wg_sw128(l.wrow + l.g, token)) = pack_bf16(s[4 * j], s[4 * j + 1]);
        *reinterpret_cast<uint32_t*>(p_tile + mla_wg_sw128(l.wrow + l.g + 8, token)) =
            pack_bf16(s[4 * j + 2], s[4 * j + 3]);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        tile_sum[r] += __shfl_xor_sync(0xffffffffu, tile_sum[r], 1);
        tile_sum[r] += __shfl_xor_sync(0xffffffffu, tile_sum[r], 2);
        row_sum[r] = row_sum[r] * corr[r] + tile_sum[r];
    }
#pragma unroll
    for (int jj = 0; jj < 32; ++jj) {
        o[4 * jj] *= corr[0];
        o[4 * jj + 1] *= corr[0];
        o[4 * jj + 2] *= corr[1];
        o[4 * jj + 3] *= corr[1];
    }
    sm90::fence_proxy_async();  // P's plain stores -> the wgmma (async proxy) reads
    mla_wg_sync();              // both halves of P are written
}

// Issues O[:, 256 wg..] += P [64, 64 tokens] . V [64 tokens, 256 dims] (V = the tile's boxes 4 wg..4 wg + 3,
// MN-major); the caller waits (wgmma_wait<0>, then fence_registers(o)).
__device__ __forceinline__ void mla_wg_pv_issue(float (&o)[128], const uint8_t* p_tile, const uint8_t* tile, int wg) {
    const uint32_t v_base = sm90::smem_addr(tile) + 4 * wg * kMlaWgBoxBytes;
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        mla_wgmma_m64n256k16_bt(o, sm90::smem_desc_sw128(p_tile + kk * 32),
                                sm90::smem_desc_sw128_mn(v_base + kk * 16 * 128, kMlaWgBoxBytes), 1);
    }
    sm90::wgmma_commit();
}

// Warpgroup 0's row sums += warpgroup 1's (its tokens' half), through red[64..127]; a full CTA barrier inside.
__device__ __forceinline__ void mla_wg_merge_row_sums(float (&row_sum)[2], const MlaWgLane& l, float* red) {
    if (l.wg == 1 && l.quad == 0) {
        red[64 + l.wrow + l.g] = row_sum[0];
        red[64 + l.wrow + l.g + 8] = row_sum[1];
    }
    mla_wg_sync();
    if (l.wg == 0) {
        row_sum[0] += red[64 + l.wrow + l.g];
        row_sum[1] += red[64 + l.wrow + l.g + 8];
    }
}

// Unnormalized partials of this split: o_part [num_seqs, num_heads, num_splits, 512], ml [.., num_splits, 2]. The
// row sums of warpgroup 1's tokens reach warpgroup 0 through `red` (its maxima were all read before the last P
// barrier).
__device__ __forceinline__ void mla_wg_store_partials(const MlaDecodeParams& p, const float (&o)[128],
                                                      const float (&row_max)[2], float (&row_sum)[2],
                                                      const MlaWgLane& l, float* red, int64_t seq, int head0, int split,
                                                      int num_splits) {
    mla_wg_merge_row_sums(row_sum, l, red);
    const int64_t rows = p.num_seqs * p.num_heads;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int head = head0 + l.wrow + l.g + 8 * r;
        if (head >= p.num_heads) {
            continue;  // a padding row of a partial head group
        }
        const int64_t slot = (seq * p.num_heads + head) * num_splits + split;
        float* o_part = p.workspace + slot * kMlaLatent + l.wg * 256;
#pragma unroll
        for (int jj = 0; jj < 32; ++jj) {
            *reinterpret_cast<float2*>(o_part + jj * 8 + l.quad * 2) =
                make_float2(o[4 * jj + 2 * r], o[4 * jj + 2 * r + 1]);
        }
        if (l.wg == 0 && l.quad == 0) {
            float* ml = p.workspace + rows * num_splits * kMlaLatent + slot * 2;
            ml[0] = row_max[r];
            ml[1] = row_sum[r];
        }
    }
}

// Four outputs at element `at` of out [num_seqs, num_heads, 512]: f32 into p.out, or bf16 (round to nearest even)
// into p.out_bf16 when that is set.
__device__ __forceinline__ void mla_wg_store_out(const MlaDecodeParams& p, int64_t at, float4 v) {
    if (p.out_bf16 != nullptr) {
        *reinterpret_cast<uint2*>(p.out_bf16 + at) = make_uint2(pack_bf16(v.x, v.y), pack_bf16(v.z, v.w));
    } else {
        *reinterpret_cast<float4*>(p.out + at) = v;
    }
}

// Lets the combine kernel (launched with programmatic stream serialization) start its launch now; it still waits
// for this whole grid (griddepcontrol.wait) before reading the partials. A no-op without such a dependent.
__device__ __forceinline__ void mla_wg_launch_dependents() {
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

// The splits of one (sequence, head group) as one thread-block cluster (grid x = cluster x = num_splits <= 8):
// instead of partials in the workspace and a combine kernel (33 MB of traffic at batch 16 x 8 splits), the CTAs
// agree on each row's max and sum through distributed shared memory, each writes O * weight into its own shared
// memory (`stage`, the free tiles), and CTA r sums rows r * ceil(64 / n).. over the cluster into `out`.
// out_scale: kv_scale for the FP8 cache.
__device__ __forceinline__ void mla_wg_cluster_combine(const MlaDecodeParams& p, const float (&o)[128],
                                                       const float (&row_max)[2], float (&row_sum)[2],
                                                       const MlaWgLane& l, float* red, float* stage, int64_t seq,
                                                       int head0, float out_scale) {
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    const int n = static_cast<int>(cluster.num_blocks());
    mla_wg_merge_row_sums(row_sum, l, red);
    mla_wg_sync();
    if (l.wg == 0 && l.quad == 0) {  // red = [max of 64 rows | sum of 64 rows] of this CTA
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            red[l.wrow + l.g + 8 * r] = row_max[r];
            red[64 + l.wrow + l.g + 8 * r] = row_sum[r];
        }
    }
    cluster.sync();
    float weight[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = l.wrow + l.g + 8 * r;
        float global_max = -INFINITY;
        for (int q = 0; q < n; ++q) {
            global_max = fmaxf(global_max, cluster.map_shared_rank(red, q)[row]);
        }
        float total = 0.0f;
        for (int q = 0; q < n; ++q) {
            const float* peer = cluster.map_shared_rank(red, q);
            total += exp2f(peer[row] - global_max) * peer[64 + row];  // 0 for a CTA without pages (max -inf)
        }
        weight[r] = exp2f(row_max[r] - global_max) * out_scale / total;
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float* stage_row = stage + (l.wrow + l.g + 8 * r) * kMlaWgStageStride + l.wg * 256 + l.quad * 2;
#pragma unroll
        for (int jj = 0; jj < 32; ++jj) {
            *reinterpret_cast<float2*>(stage_row + jj * 8) =
                make_float2(o[4 * jj + 2 * r] * weight[r], o[4 * jj + 2 * r + 1] * weight[r]);
        }
    }
    cluster.sync();
    const int rows_per_rank = (64 + n - 1) / n;
    const int row_begin = static_cast<int>(cluster.block_rank()) * rows_per_rank;
    const int num_rows = max(0, min(64, row_begin + rows_per_rank) - row_begin);
    for (int idx = static_cast<int>(threadIdx.x); idx < num_rows * (kMlaLatent / 4); idx += kMlaWgThreads) {
        const int row = row_begin + idx / (kMlaLatent / 4);
        const int col = (idx % (kMlaLatent / 4)) * 4;
        float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (int q = 0; q < n; ++q) {
            const float4 v =
                *reinterpret_cast<const float4*>(cluster.map_shared_rank(stage, q) + row * kMlaWgStageStride + col);
            acc.x += v.x;
            acc.y += v.y;
            acc.z += v.z;
            acc.w += v.w;
        }
        if (head0 + row < p.num_heads) {  // padding rows of a partial head group stay unwritten
            mla_wg_store_out(p, (seq * p.num_heads + head0 + row) * kMlaLatent + col, acc);
        }
    }
    cluster.sync();  // nobody leaves while a peer still reads its shared memory
}

// ---- BF16 cache: TMA into the two tiles ----

// Rows valid..63 of a TMA-written page tile (all 9 boxes) to zeros: the last page of a sequence.
__device__ __forceinline__ void mla_wg_zero_tail(uint8_t* tile, int valid) {
    constexpr int kUnitsPerRow = kMlaWgBoxes * 8;  // 72 chunks of 16 bytes
    for (int unit = static_cast<int>(threadIdx.x); unit < (64 - valid) * kUnitsPerRow; unit += kMlaWgThreads) {
        const int row = valid + unit / kUnitsPerRow;
        const int u = unit % kUnitsPerRow;  // all of the row is zeroed: no swizzle arithmetic needed
        *reinterpret_cast<uint4*>(tile + (u / 8) * kMlaWgBoxBytes + row * 128 + (u % 8) * 16) =
            make_uint4(0u, 0u, 0u, 0u);
    }
}

// Thread 0: page `local` of the split into tile `slot` (9 TMA boxes completing on full[slot]), and the page
// l2_ahead pages later into L2.
__device__ __forceinline__ void mla_wg_issue_bf16(const CUtensorMap* cache_map, const MlaDecodeParams& p,
                                                  const MlaWgWork& w, int local, int l2_ahead, uint8_t* ring,
                                                  uint64_t* full) {
    const int slot = local & 1;
    const int64_t block = w.block_table[w.page_begin + local];
    uint8_t* dst = ring + slot * kMlaWgTileBytes;
    sm90::mbar_arrive_expect_tx(&full[slot], kMlaWgTileBytes);
#pragma unroll
    for (int b = 0; b < kMlaWgBoxes; ++b) {
        sm90::tma_load_2d(dst + b * kMlaWgBoxBytes, cache_map, &full[slot], b * 64,
                          static_cast<int>(block * kMlaPageTokens));
    }
    const int ahead = local + l2_ahead;
    if (l2_ahead > 0 && local >= 2 && ahead < w.num_local) {  // the prologue prefetches pages 2..1 + l2_ahead
        const int64_t ahead_block = w.block_table[w.page_begin + ahead];
        mla_wg_prefetch_l2(p.cache + ahead_block * kMlaPageTokens * kMlaEntry, kMlaWgTileBytes);
    }
}

// grid: [num_splits, num_seqs, ceil(num_heads / 64)], block: kMlaWgThreads, dynamic smem kMlaWgSmemBytes.
// cache_map: the cache as [rows, 576] bf16, box [64, 64], 128B swizzle. l2_ahead: pages prefetched into L2 beyond
// the two tiles (0: none). kCluster: launched as clusters of num_splits CTAs along x, combined in the kernel into
// `out` (mla_wg_cluster_combine); otherwise partials into the workspace for mla_decode_wgmma_combine_kernel.
template <bool kCluster>
__global__ void __launch_bounds__(kMlaWgThreads, 1)
    mla_decode_wgmma_bf16_kernel(const __grid_constant__ CUtensorMap cache_map,
                                 const __grid_constant__ MlaDecodeParams p, int num_splits, int pages_per_split,
                                 int l2_ahead) {
    extern __shared__ uint8_t smem_raw[];
    uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
    uint8_t* q_tile = smem;                                         // [9 boxes][64 heads][64] bf16, swizzled
    uint8_t* ring = smem + kMlaWgRingOffset;                        // [2 tiles][9 boxes][64 tokens][64] bf16, swizzled
    uint8_t* p_tile = smem + kMlaWgPOffset;                         // [64 heads][64 tokens] bf16, swizzled
    float* red = reinterpret_cast<float*>(smem + kMlaWgRedOffset);  // [2 warpgroups][64 rows]
    uint64_t* full = reinterpret_cast<uint64_t*>(smem + kMlaWgBarOffset);  // [2] the tile's page landed
    uint64_t* empty = full + 2;  // [2] warpgroup 1 is done with the tile (warpgroup 0's thread 0 then refills it)
    const int64_t seq = blockIdx.y;
    const int head0 = blockIdx.z * kMlaHeadsPerCta;
    const MlaWgWork w = mla_wg_work(p, seq, blockIdx.x, num_splits, pages_per_split);
    if constexpr (!kCluster) {
        mla_wg_launch_dependents();
    }

    // No producer warp: a third (partial) warpgroup would cap every thread at 168 registers (ptxas counts whole
    // warpgroups), and the 128 + 16 accumulators then serialize the wgmmas. Thread 0 issues the loads instead.
    if (threadIdx.x == 0) {
#pragma unroll
        for (int b = 0; b < 2; ++b) {
            sm90::mbar_init(&full[b], 1);
            sm90::mbar_init(&empty[b], 1);
        }
        sm90::fence_mbarrier_init();
        sm90::prefetch_tensormap(&cache_map);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int i = 0; i < min(2 + l2_ahead, w.num_local); ++i) {
            if (i < 2) {
                mla_wg_issue_bf16(&cache_map, p, w, i, l2_ahead, ring, full);
            } else {
                const int64_t block = w.block_table[w.page_begin + i];
                mla_wg_prefetch_l2(p.cache + block * kMlaPageTokens * kMlaEntry, kMlaWgTileBytes);
            }
        }
    }
    const MlaWgLane l = mla_wg_lane();
    mla_wg_load_q(q_tile, p.q + (seq * p.num_heads + head0) * kMlaEntry, min(kMlaHeadsPerCta, p.num_heads - head0));
    sm90::cp_async_wait<0>();
    sm90::fence_proxy_async();
    mla_wg_sync();

    const float scale_log2 = p.softmax_scale * 1.4426950408889634f;
    float o[128];  // O[64 heads, 256 dims of this warpgroup]: the m64n256 accumulator fragment
#pragma unroll
    for (int i = 0; i < 128; ++i) {
        o[i] = 0.0f;
    }
    float row_max[2] = {-INFINITY, -INFINITY};  // log2 domain; equal in both warpgroups
    float row_sum[2] = {0.0f, 0.0f};            // this warpgroup's tokens only; added up at the end
    for (int i = 0; i < w.num_local; ++i) {
        const int slot = i & 1;
        const int valid = w.seq_len - (w.page_begin + i) * kMlaPageTokens;  // >= 1; < 64 only on the last page
        uint8_t* tile = ring + slot * kMlaWgTileBytes;
        sm90::mbar_wait(&full[slot], (i >> 1) & 1);
        if (valid < kMlaPageTokens) {
            mla_wg_zero_tail(tile, valid);
            sm90::fence_proxy_async();
            mla_wg_sync();
        }
        float s[16];
        mla_wg_scores(s, q_tile, tile + l.wg * 32 * 128);
        mla_wg_softmax(s, o, row_max, row_sum, l, valid, scale_log2, red, p_tile);
        mla_wg_pv_issue(o, p_tile, tile, l.wg);
        sm90::wgmma_wait<0>();
        sm90::fence_registers(o);
        if (threadIdx.x == 128) {
            sm90::mbar_arrive(&empty[slot]);
        }
        if (threadIdx.x == 0 && i + 2 < w.num_local) {
            sm90::mbar_wait(&empty[slot], (i >> 1) & 1);
            mla_wg_issue_bf16(&cache_map, p, w, i + 2, l2_ahead, ring, full);
        }
    }
    if constexpr (kCluster) {
        mla_wg_cluster_combine(p, o, row_max, row_sum, l, red, reinterpret_cast<float*>(ring), seq, head0, 1.0f);
    } else {
        mla_wg_store_partials(p, o, row_max, row_sum, l, red, seq, head0, blockIdx.x, num_splits);
    }
}

// ---- FP8 cache: registers -> converted into the two tiles ----

// This thread's 9 x 16 e4m3 codes of page `local` (units threadIdx.x + 256 k of the 2,304 in the page); rows past
// seq_len read as zeros, never from the cache.
__device__ __forceinline__ void mla_wg_fp8_load(uint4 (&raw)[kMlaWgFp8Units], const MlaDecodeParams& p,
                                                const MlaWgWork& w, int local) {
    const int64_t block = w.block_table[w.page_begin + local];
    const int valid = w.seq_len - (w.page_begin + local) * kMlaPageTokens;
    const uint8_t* page = p.cache_fp8 + block * kMlaWgFp8PageBytes;
#pragma unroll
    for (int k = 0; k < kMlaWgFp8Units; ++k) {
        const int unit = static_cast<int>(threadIdx.x) + k * kMlaWgThreads;
        raw[k] = unit / (kMlaEntry / 16) < valid ? mla_wg_ld_stream(page + unit * 16) : make_uint4(0u, 0u, 0u, 0u);
    }
}

// Four e4m3 codes (low byte first) as four bf16 (two words, low code first), exactly and on the integer/half pipes:
// each code's sign and 7 exponent/mantissa bits are moved into bf16 position, which makes a bf16 of value
// code * 2^-120 (e4m3 subnormals become bf16 subnormals, exactly), and one bf16x2 multiply by 2^120 (a power of
// two: exact, every result normal) restores the value. The cvt path (e4m3x2 -> f16x2 -> 2 f32 -> bf16x2) needs two
// conversions per two codes on the quarter-rate conversion unit. The NaN codes (0x7f, 0xff) would come out as
// +-480: the kernel never reads them (rows past seq_len are zeros before conversion).
__device__ __forceinline__ uint2 mla_wg_fp8x4_to_bf16(uint32_t codes) {
    constexpr uint32_t kTwoPow120 = 0x7b807b80u;                        // bf16x2 {2^120, 2^120}
    const uint32_t lo = __byte_perm(codes, 0u, 0x1404);                 // [c1 00 c0 00]: codes in the lanes' high bytes
    const uint32_t hi = __byte_perm(codes, 0u, 0x3424);                 // [c3 00 c2 00]
    uint32_t lo_bits = ((lo >> 4) & 0x07f007f0u) | (lo & 0x80008000u);  // sign at 15, e4m3 bits 6..0 at 10..4
    uint32_t hi_bits = ((hi >> 4) & 0x07f007f0u) | (hi & 0x80008000u);
    asm("mul.rn.bf16x2 %0, %0, %1;" : "+r"(lo_bits) : "r"(kTwoPow120));
    asm("mul.rn.bf16x2 %0, %0, %1;" : "+r"(hi_bits) : "r"(kTwoPow120));
    return make_uint2(lo_bits, hi_bits);
}

// A thread's 9 units of e4m3 codes (unit k = 16 codes of unit threadIdx.x + 256 k of the page) as bf16 into a tile:
// unit u of a 576-byte row (columns 16 u..) becomes chunks 2 (u % 4) and 2 (u % 4) + 1 of box u / 4. kFastCvt:
// mla_wg_fp8x4_to_bf16, otherwise fp8x8_to_unit (the cvt path of session 6).
template <bool kFastCvt>
__device__ __forceinline__ void mla_wg_fp8_store(uint8_t* tile, const uint4 (&raw)[kMlaWgFp8Units]) {
#pragma unroll
    for (int k = 0; k < kMlaWgFp8Units; ++k) {
        const int unit = static_cast<int>(threadIdx.x) + k * kMlaWgThreads;
        const int row = unit / (kMlaEntry / 16);
        const int u = unit % (kMlaEntry / 16);
        uint32_t lo[4];
        uint32_t hi[4];
        if constexpr (kFastCvt) {
            const uint2 a = mla_wg_fp8x4_to_bf16(raw[k].x);
            const uint2 b = mla_wg_fp8x4_to_bf16(raw[k].y);
            const uint2 c = mla_wg_fp8x4_to_bf16(raw[k].z);
            const uint2 d = mla_wg_fp8x4_to_bf16(raw[k].w);
            lo[0] = a.x, lo[1] = a.y, lo[2] = b.x, lo[3] = b.y;
            hi[0] = c.x, hi[1] = c.y, hi[2] = d.x, hi[3] = d.y;
        } else {
            fp8x8_to_unit(make_uint2(raw[k].x, raw[k].y), lo);
            fp8x8_to_unit(make_uint2(raw[k].z, raw[k].w), hi);
        }
        uint8_t* box_row = tile + (u / 4) * kMlaWgBoxBytes + row * 128;
        const int chunk = (u % 4) * 2;
        if constexpr (kFastCvt) {  // st.shared (the generic stores below resolve the address space at run time)
            st_shared_v4(sm90::smem_addr(box_row + ((chunk ^ (row & 7)) << 4)), lo);
            st_shared_v4(sm90::smem_addr(box_row + (((chunk + 1) ^ (row & 7)) << 4)), hi);
        } else {
            *reinterpret_cast<uint4*>(box_row + ((chunk ^ (row & 7)) << 4)) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
            *reinterpret_cast<uint4*>(box_row + (((chunk + 1) ^ (row & 7)) << 4)) =
                make_uint4(hi[0], hi[1], hi[2], hi[3]);
        }
    }
}

__device__ __forceinline__ void mla_wg_fp8_prefetch(const MlaDecodeParams& p, const MlaWgWork& w, int local) {
    if (threadIdx.x == 0 && local < w.num_local) {
        mla_wg_prefetch_l2(p.cache_fp8 + static_cast<int64_t>(w.block_table[w.page_begin + local]) * kMlaWgFp8PageBytes,
                           kMlaWgFp8PageBytes);
    }
}

// One page of the register-fed FP8 kernel (session 6): S, softmax, P.V on `tile`; under P.V, page i + 1 (its codes
// in raw) is converted into `next` and page i + 2's codes are loaded into raw.
__device__ __forceinline__ void mla_wg_fp8_page(const MlaDecodeParams& p, const MlaWgWork& w, const MlaWgLane& l, int i,
                                                float scale_log2, int l2_ahead, const uint8_t* q_tile,
                                                const uint8_t* tile, uint8_t* next, uint8_t* p_tile, float* red,
                                                uint4 (&raw)[kMlaWgFp8Units], float (&o)[128], float (&row_max)[2],
                                                float (&row_sum)[2]) {
    const int valid = w.seq_len - (w.page_begin + i) * kMlaPageTokens;
    float s[16];
    mla_wg_scores(s, q_tile, tile + l.wg * 32 * 128);
    mla_wg_softmax(s, o, row_max, row_sum, l, valid, scale_log2, red, p_tile);
    mla_wg_pv_issue(o, p_tile, tile, l.wg);
    // `next` was last read by page i - 1's P.V, which every thread waited for before the last barrier.
    if (i + 1 < w.num_local) {
        mla_wg_fp8_store<false>(next, raw);
        sm90::fence_proxy_async();  // these plain stores -> the next page's wgmma reads
    }
    if (i + 2 < w.num_local) {
        mla_wg_fp8_load(raw, p, w, i + 2);
        if (l2_ahead > 0) {
            mla_wg_fp8_prefetch(p, w, i + 2 + l2_ahead);
        }
    }
    sm90::wgmma_wait<0>();
    sm90::fence_registers(o);
    if (i + 1 < w.num_local) {
        mla_wg_sync();  // page i + 1's tile is complete before anyone's S reads it
    }
}

// The FP8 kernel (session 6's, the default; K2_MLA_WG_FP8=staged runs mla_decode_wgmma_fp8_staged_kernel instead):
// pages through registers, converted under P.V into two tiles.
// grid, block, shared memory and kCluster as mla_decode_wgmma_bf16_kernel (the mbarriers unused).
template <bool kCluster>
__global__ void __launch_bounds__(kMlaWgThreads, 1)
    mla_decode_wgmma_fp8_kernel(const __grid_constant__ MlaDecodeParams p, int num_splits, int pages_per_split,
                                int l2_ahead) {
    extern __shared__ uint8_t smem_raw[];
    uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
    uint8_t* q_tile = smem;                                         // [9 boxes][64 heads][64] bf16, swizzled
    uint8_t* ring = smem + kMlaWgRingOffset;                        // [2 tiles][9 boxes][64 tokens][64] bf16, swizzled
    uint8_t* p_tile = smem + kMlaWgPOffset;                         // [64 heads][64 tokens] bf16, swizzled
    float* red = reinterpret_cast<float*>(smem + kMlaWgRedOffset);  // [2 warpgroups][64 rows]
    const int64_t seq = blockIdx.y;
    const int head0 = blockIdx.z * kMlaHeadsPerCta;
    const MlaWgWork w = mla_wg_work(p, seq, blockIdx.x, num_splits, pages_per_split);
    if constexpr (!kCluster) {
        mla_wg_launch_dependents();
    }
    for (int ahead = 2; ahead < 2 + l2_ahead; ++ahead) {
        mla_wg_fp8_prefetch(p, w, ahead);
    }
    uint4 raw[kMlaWgFp8Units];  // the next page's codes, in flight while the current page is computed
    if (w.num_local > 0) {
        mla_wg_fp8_load(raw, p, w, 0);
    }
    const MlaWgLane l = mla_wg_lane();
    mla_wg_load_q(q_tile, p.q + (seq * p.num_heads + head0) * kMlaEntry, min(kMlaHeadsPerCta, p.num_heads - head0));
    if (w.num_local > 0) {
        mla_wg_fp8_store<false>(ring, raw);
    }
    if (w.num_local > 1) {
        mla_wg_fp8_load(raw, p, w, 1);
    }
    sm90::cp_async_wait<0>();
    sm90::fence_proxy_async();
    mla_wg_sync();

    const float scale_log2 = p.softmax_scale * p.kv_scale * 1.4426950408889634f;
    float o[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) {
        o[i] = 0.0f;
    }
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.0f, 0.0f};
    for (int i = 0; i < w.num_local; ++i) {
        mla_wg_fp8_page(p, w, l, i, scale_log2, l2_ahead, q_tile, ring + (i & 1) * kMlaWgTileBytes,
                        ring + ((i + 1) & 1) * kMlaWgTileBytes, p_tile, red, raw, o, row_max, row_sum);
    }
    if constexpr (kCluster) {
        mla_wg_cluster_combine(p, o, row_max, row_sum, l, red, reinterpret_cast<float*>(ring), seq, head0, p.kv_scale);
    } else {
        mla_wg_store_partials(p, o, row_max, row_sum, l, red, seq, head0, blockIdx.x, num_splits);
    }
}

// ---- combine of the splits' partials (more than kMaxClusterSplits splits) ----

// grid: [num_seqs * num_heads], block: 128 (4 of the row's 512 outputs per thread). The same function as
// mla_decode.cuh's mla_decode_combine_kernel, rebuilt for latency: the row's (max, sum) pairs and partials are
// loaded 8 splits at a time with all loads of a batch in flight and merged by an online rescale (one round trip to L2
// for up to 8 splits; the old loop waited on one split after the other), the output may be bf16 (p.out_bf16), and it
// is launched with programmatic stream serialization, so its launch overlaps the split kernel's tail;
// griddepcontrol.wait then waits for that whole grid and its writes.
__global__ void __launch_bounds__(128)
    mla_decode_wgmma_combine_kernel(const __grid_constant__ MlaDecodeParams p, int num_splits) {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    constexpr int kBatch = 8;
    const int64_t row = blockIdx.x;  // seq * num_heads + head
    const int64_t rows = p.num_seqs * p.num_heads;
    const float2* ml = reinterpret_cast<const float2*>(p.workspace + rows * num_splits * kMlaLatent) + row * num_splits;
    const float4* part = reinterpret_cast<const float4*>(p.workspace + row * num_splits * kMlaLatent) + threadIdx.x;
    float run_max = -INFINITY;  // finite after the first batch: split 0 always has a page (seq_len >= 1)
    float denom = 0.0f;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int s0 = 0; s0 < num_splits; s0 += kBatch) {
        float2 m[kBatch];  // (max, sum) of split s0 + k; max = -inf for a split without pages
        float4 v[kBatch];
#pragma unroll
        for (int k = 0; k < kBatch; ++k) {
            const bool live = s0 + k < num_splits;
            m[k] = live ? __ldg(&ml[s0 + k]) : make_float2(-INFINITY, 0.0f);
            v[k] = live ? __ldg(&part[(s0 + k) * (kMlaLatent / 4)]) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
        float new_max = run_max;
#pragma unroll
        for (int k = 0; k < kBatch; ++k) {
            new_max = fmaxf(new_max, m[k].x);
        }
        const float rescale = exp2f(run_max - new_max);  // 0 on the first batch (run_max = -inf)
        run_max = new_max;
        denom *= rescale;
        acc = make_float4(acc.x * rescale, acc.y * rescale, acc.z * rescale, acc.w * rescale);
#pragma unroll
        for (int k = 0; k < kBatch; ++k) {
            const float w = exp2f(m[k].x - new_max);  // 0 for splits without pages
            denom += w * m[k].y;
            acc.x += w * v[k].x;
            acc.y += w * v[k].y;
            acc.z += w * v[k].z;
            acc.w += w * v[k].w;
        }
    }
    const float inv = (p.cache_fp8 != nullptr ? p.kv_scale : 1.0f) / denom;
    mla_wg_store_out(p, row * kMlaLatent + threadIdx.x * 4,
                     make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv));
}

}  // namespace k2::cuda::kernels

// Host side of moe_ops.h: validation, then the raw launches of moe_ops.cu; and the prefill form of the grouped
// GEMM (one Fp8GemmRunner call per expert with rows).
#include "backend/cuda/moe_ops.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string_view>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/moe_ops_detail.h"

namespace k2::cuda {
namespace {

bool aligned16(const void* ptr) {
    return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

constexpr int64_t kMaxRows = int64_t{1} << 30;  // rows and pairs are int32 on the device, with headroom

}  // namespace

void check_grouped_gemm_params(const Fp8GroupedGemmParams& p, int max_experts, const char* op) {
    K2_CHECK(p.num_experts >= 1 && p.num_experts <= max_experts, "{}: num_experts {} not in [1, {}]", op, p.num_experts,
             max_experts);
    K2_CHECK(p.n > 0 && p.n % 128 == 0, "{}: n = {} is not a positive multiple of 128", op, p.n);
    K2_CHECK(p.k > 0 && p.k % 128 == 0, "{}: k = {} is not a positive multiple of 128", op, p.k);
    K2_CHECK(p.max_rows_per_expert >= 0, "{}: max_rows_per_expert {} < 0", op, p.max_rows_per_expert);
    K2_CHECK(p.x != nullptr && p.x_scale != nullptr && p.w != nullptr && p.w_scale != nullptr && p.y != nullptr &&
                 p.offsets != nullptr,
             "{}: null operand", op);
    K2_CHECK(aligned16(p.x) && aligned16(p.w), "{}: x and w must be 16-byte aligned", op);
}

void launch_moe_permute(const MoePermuteParams& p, cudaStream_t stream) {
    if (p.num_tokens == 0) {
        return;
    }
    K2_CHECK(p.num_tokens > 0, "moe permute: num_tokens {} < 0", p.num_tokens);
    K2_CHECK(p.top_k >= 1, "moe permute: top_k {} < 1", p.top_k);
    K2_CHECK(p.num_experts >= 1 && p.num_experts <= detail::kMoeMaxExperts,
             "moe permute: num_experts {} not in [1, {}]", p.num_experts, detail::kMoeMaxExperts);
    K2_CHECK(p.expert_begin >= 0, "moe permute: expert_begin {} < 0", p.expert_begin);
    K2_CHECK(p.num_tokens <= kMaxRows / p.top_k, "moe permute: {} tokens x top_k {} pairs overflow int32", p.num_tokens,
             p.top_k);
    K2_CHECK(p.topk_ids != nullptr && p.offsets != nullptr && p.row_token != nullptr && p.pair_row != nullptr,
             "moe permute: null pointer");
    CUDA_CHECK(detail::launch_moe_permute_kernel(p, stream));
}

void launch_moe_gather(const MoeGatherParams& p, cudaStream_t stream) {
    if (p.num_rows == 0) {
        return;
    }
    K2_CHECK(p.num_rows > 0 && p.num_rows <= kMaxRows, "moe gather: num_rows {} out of range", p.num_rows);
    K2_CHECK(p.k > 0 && p.k % 128 == 0, "moe gather: k = {} is not a positive multiple of 128", p.k);
    K2_CHECK(p.num_experts >= 1 && p.num_experts <= detail::kMoeMaxExperts, "moe gather: num_experts {} not in [1, {}]",
             p.num_experts, detail::kMoeMaxExperts);
    K2_CHECK(p.x_scale_stride >= 1, "moe gather: x_scale_stride {} < 1", p.x_scale_stride);
    K2_CHECK(p.x != nullptr && p.x_scale != nullptr && p.row_token != nullptr && p.offsets != nullptr &&
                 p.out != nullptr && p.out_scale != nullptr,
             "moe gather: null pointer");
    K2_CHECK(aligned16(p.x) && aligned16(p.out), "moe gather: x and out must be 16-byte aligned");
    CUDA_CHECK(detail::launch_moe_gather_kernel(p, stream));
}

namespace {

// Measured on the H200 (docs/perf/kernels.md, "MoE decode: the persistent grouped GEMM"): with an L2 prefetch 4 k
// blocks ahead the Kimi-K2 expert GEMMs stream at 98-99% of the copy rate at 16 tokens and 93-94% at 64 (91-94% and
// 79-82% without it), but lose 3-5% at 1 token (8 experts: a 16-row slice per warp or less) and gate_up loses 10% at
// 256 tokens. The prefetched lines of all resident warps (16 rows x 12 k blocks x 128 B each, ~39 MB) have to fit in
// the L2 beside the loads: 16 k blocks ahead thrashes it.
int default_l2_ahead(const Fp8GroupedGemmParams& p) {
    return p.max_rows_per_expert >= 4 && p.max_rows_per_expert <= 64 ? 4 : 0;
}

}  // namespace

void launch_fp8_grouped_gemm_decode(const Fp8GroupedGemmParams& p, cudaStream_t stream) {
    if (p.max_rows_per_expert == 0) {
        return;  // no tokens: every expert is empty
    }
    check_grouped_gemm_params(p, 65535, "fp8 grouped gemm");
    const int64_t rows = std::min(p.max_rows_per_expert, kDecodeTokensPerPass);
    const int64_t tiles = (rows + 7) / 8;
    const int max_tiles = tiles <= 1 ? 1 : tiles <= 2 ? 2 : tiles <= 4 ? 4 : 8;
    if (grouped_decode_kernel(p) == GroupedDecodeKernel::Blocks) {
        CUDA_CHECK(detail::launch_fp8_grouped_gemm_decode_kernel(p, max_tiles, stream));
        return;
    }
    K2_CHECK(p.num_experts <= detail::kMoeMaxExperts,
             "fp8 grouped gemm: the persistent form takes <= {} experts, got {}", detail::kMoeMaxExperts,
             p.num_experts);
    K2_CHECK(p.decode_k_split == 0 || p.decode_k_split == 1 || p.decode_k_split == 4,
             "fp8 grouped gemm: decode_k_split {} is not 0 (auto), 1 or 4", p.decode_k_split);
    K2_CHECK(p.decode_k_split != 4 || max_tiles <= 2,
             "fp8 grouped gemm: the k split takes up to 16 rows per expert, max_rows_per_expert is {}",
             p.max_rows_per_expert);
    K2_CHECK(p.max_touched_experts >= 0, "fp8 grouped gemm: max_touched_experts {} < 0", p.max_touched_experts);
    int l2_ahead = p.l2_ahead;
    if (l2_ahead < 0) {
        static const int from_env = [] {
            const char* v = std::getenv("K2_MOE_DECODE_L2_AHEAD");
            return v != nullptr ? std::max(0, std::atoi(v)) : -1;
        }();
        l2_ahead = from_env >= 0 ? from_env : default_l2_ahead(p);
    }
    Fp8GroupedGemmParams launch = p;
    if (launch.decode_k_split == 0) {
        // K2_MOE_DECODE_KSPLIT=1 keeps the k split off for A/B runs of the model (it changes the rounding only).
        static const bool split_off = [] {
            const char* v = std::getenv("K2_MOE_DECODE_KSPLIT");
            return v != nullptr && std::string_view(v) == "1";
        }();
        launch.decode_k_split = split_off ? 1 : 0;
    }
    CUDA_CHECK(detail::launch_fp8_grouped_gemm_decode_persistent(launch, max_tiles, l2_ahead, stream));
}

GroupedDecodeKernel grouped_decode_kernel(const Fp8GroupedGemmParams& p) {
    if (p.decode_kernel != GroupedDecodeKernel::Auto) {
        return p.decode_kernel;
    }
    static const bool blocks = [] {
        const char* v = std::getenv("K2_MOE_DECODE_KERNEL");
        return v != nullptr && std::string_view(v) == "blocks";
    }();
    // The persistent kernel lists the experts in shared memory; above 64 tokens per expert it measured 2-4% slower
    // than the blocks (kernels.md "Session 7").
    const bool fits = p.num_experts <= detail::kMoeMaxExperts && p.max_rows_per_expert <= 64;
    return blocks || !fits ? GroupedDecodeKernel::Blocks : GroupedDecodeKernel::Persistent;
}

namespace {

void check_prefill_args(const Fp8GroupedGemmParams& p, const int32_t* host_offsets) {
    K2_CHECK(host_offsets != nullptr, "fp8 grouped gemm prefill: null host_offsets");
    K2_CHECK(p.num_experts >= 1, "fp8 grouped gemm prefill: num_experts {} < 1", p.num_experts);
    check_grouped_gemm_params(p, 65535, "fp8 grouped gemm");
    K2_CHECK(host_offsets[0] == 0, "fp8 grouped gemm prefill: offsets[0] = {} (expected 0)", host_offsets[0]);
    for (int e = 0; e < p.num_experts; ++e) {
        K2_CHECK(host_offsets[e + 1] >= host_offsets[e],
                 "fp8 grouped gemm prefill: offsets decrease at expert {} ({} -> {})", e, host_offsets[e],
                 host_offsets[e + 1]);
    }
}

// NOTE: cuBLASLt reads 128x128 block scales with the k-block dimension padded to a multiple of 4 (PyTorch #166752,
// "Fix DeepSeek scaling tensor handling"); our w_scale rows are k / 128 long, so other k stay on our kernel. With
// k / 128 % 4 == 0 every expert's scale block also starts 16-byte aligned.
Fp8GemmImpl prefill_impl(const Fp8GroupedGemmParams& p) {
    return (p.k / 128) % 4 == 0 ? Fp8GemmImpl::Auto : Fp8GemmImpl::Decode;
}

// Expert e's GEMM (rows > 0). With padded_scales an m % 16 != 0 expert still takes cuBLASLt: its scale block is
// re-strided there and the padded rows' outputs land on the rows after it, or in y_scratch when given (then the
// real rows are copied to y).
void run_expert(Fp8GemmRunner& runner, const Fp8GroupedGemmParams& p, const int32_t* host_offsets, int e,
                cudaStream_t stream, float* padded_scales, uint16_t* y_scratch) {
    const int64_t num_kb = p.k / 128;
    const int64_t begin = host_offsets[e];
    const int64_t rows = host_offsets[e + 1] - begin;
    const Fp8GemmImpl impl = prefill_impl(p);
    Fp8GemmParams g;
    g.x = p.x + begin * p.k;                           // [rows, k]
    g.x_scale = p.x_scale + begin * num_kb;            // [k / 128, rows]: the expert's block
    g.w = p.w + e * p.n * p.k;                         // [n, k]
    g.w_scale = p.w_scale + e * (p.n / 128) * num_kb;  // [n / 128, k / 128]
    g.y = p.y + begin * p.n;                           // [rows, n]
    g.num_tokens = rows;
    g.n = p.n;
    g.k = p.k;
    g.x_stride = p.k;
    g.x_scale_stride = rows;
    g.y_stride = p.n;
    const bool pad = padded_scales != nullptr && impl == Fp8GemmImpl::Auto && rows % 16 != 0 && rows >= 16;
    if (pad) {
        const int64_t padded = round_up_16(rows);  // [k / 128, padded]: the expert's block, re-strided
        CUDA_CHECK(cudaMemcpy2DAsync(padded_scales, static_cast<size_t>(padded) * 4, g.x_scale,
                                     static_cast<size_t>(rows) * 4, static_cast<size_t>(rows) * 4,
                                     static_cast<size_t>(num_kb), cudaMemcpyDeviceToDevice, stream));
        g.x_scale = padded_scales;
        g.x_scale_stride = padded;
        g.padded_rows = true;
        if (y_scratch != nullptr) {
            g.y = y_scratch;
        }
    }
    runner.run(g, stream, impl);
    if (pad && y_scratch != nullptr) {
        const size_t row_bytes = static_cast<size_t>(p.n) * 2;
        CUDA_CHECK(cudaMemcpyAsync(p.y + begin * p.n, y_scratch, static_cast<size_t>(rows) * row_bytes,
                                   cudaMemcpyDeviceToDevice, stream));
    }
}

}  // namespace

void run_fp8_grouped_gemm_prefill(Fp8GemmRunner& runner, const Fp8GroupedGemmParams& p, const int32_t* host_offsets,
                                  cudaStream_t stream, float* padded_scales) {
    K2_CHECK(host_offsets != nullptr, "fp8 grouped gemm prefill: null host_offsets");
    if (p.num_experts >= 1 && host_offsets[p.num_experts] == 0) {
        return;  // no tokens
    }
    check_prefill_args(p, host_offsets);
    for (int e = 0; e < p.num_experts; ++e) {
        if (host_offsets[e + 1] > host_offsets[e]) {
            run_expert(runner, p, host_offsets, e, stream, padded_scales, nullptr);
        }
    }
}

void run_fp8_grouped_gemm_prefill_lanes(std::span<const Fp8PrefillLane> lanes, const Fp8GroupedGemmParams& p,
                                        const int32_t* host_offsets, cudaStream_t stream, cudaEvent_t fork) {
    K2_CHECK(!lanes.empty() && fork != nullptr, "fp8 grouped gemm prefill: no lanes or no fork event");
    K2_CHECK(host_offsets != nullptr, "fp8 grouped gemm prefill: null host_offsets");
    if (p.num_experts >= 1 && host_offsets[p.num_experts] == 0) {
        return;
    }
    check_prefill_args(p, host_offsets);
    const auto num_lanes = static_cast<int64_t>(lanes.size());
    const int64_t total = host_offsets[p.num_experts];
    CUDA_CHECK(cudaEventRecord(fork, stream));
    int first = 0;  // lane j takes experts [first, last): rows up to about (j + 1) / lanes of the total
    for (int64_t j = 0; j < num_lanes; ++j) {
        const Fp8PrefillLane& lane = lanes[static_cast<size_t>(j)];
        const int64_t target = total * (j + 1) / num_lanes;
        int last = first;
        while (last < p.num_experts && (j == num_lanes - 1 || host_offsets[last + 1] <= target)) {
            ++last;
        }
        int last_with_rows = -1;  // its padded rows would land on the next lane's rows
        for (int e = first; e < last; ++e) {
            last_with_rows = host_offsets[e + 1] > host_offsets[e] ? e : last_with_rows;
        }
        CUDA_CHECK(cudaStreamWaitEvent(lane.stream, fork, 0));
        for (int e = first; e < last; ++e) {
            if (host_offsets[e + 1] > host_offsets[e]) {
                const bool range_end = e == last_with_rows && last < p.num_experts;
                run_expert(*lane.runner, p, host_offsets, e, lane.stream, lane.padded_scales,
                           range_end ? lane.y_scratch : nullptr);
            }
        }
        CUDA_CHECK(cudaEventRecord(lane.done, lane.stream));
        CUDA_CHECK(cudaStreamWaitEvent(stream, lane.done, 0));
        first = last;
    }
}

void launch_moe_ep_drop_padding(const MoeEpDropParams& p, cudaStream_t stream) {
    K2_CHECK(p.dp >= 1 && p.tp >= 1 && p.top_k >= 1 && p.slice_rows >= 0,
             "moe ep drop padding: dp {}, tp {}, top_k {} must be >= 1 and slice_rows {} >= 0", p.dp, p.tp, p.top_k,
             p.slice_rows);
    const int64_t pairs = int64_t{p.dp} * p.tp * p.slice_rows * p.top_k;
    if (pairs == 0) {
        return;
    }
    K2_CHECK(pairs <= kMaxRows, "moe ep drop padding: {} pairs out of range", pairs);
    K2_CHECK(p.topk_ids != nullptr && p.counts != nullptr, "moe ep drop padding: null pointer");
    CUDA_CHECK(detail::launch_moe_ep_drop_padding_kernel(p, stream));
}

void launch_moe_combine(const MoeCombineParams& p, cudaStream_t stream) {
    if (p.num_tokens == 0) {
        return;
    }
    K2_CHECK(p.num_tokens > 0 && p.num_tokens <= std::numeric_limits<int32_t>::max(),
             "moe combine: num_tokens {} out of range", p.num_tokens);
    K2_CHECK(p.top_k >= 1, "moe combine: top_k {} < 1", p.top_k);
    K2_CHECK(p.hidden > 0 && p.hidden % 8 == 0, "moe combine: hidden {} is not a positive multiple of 8", p.hidden);
    K2_CHECK(p.y != nullptr && p.pair_row != nullptr && p.topk_weights != nullptr && p.out != nullptr,
             "moe combine: null pointer");
    K2_CHECK(aligned16(p.y) && aligned16(p.out) && (p.shared == nullptr || aligned16(p.shared)),
             "moe combine: y, shared and out must be 16-byte aligned");
    CUDA_CHECK(detail::launch_moe_combine_kernel(p, stream));
}

}  // namespace k2::cuda

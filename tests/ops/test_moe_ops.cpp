// The MoE ops of moe_ops.h against host references nobody tuned to them: permute vs std::stable_sort of the
// (token, k) pairs, gather bitwise vs a host copy, the grouped FP8 GEMM (decode kernel and the per-expert prefill
// form) vs cpu::linear per expert over the dequantized inputs, combine vs a host fp32 sum. Outputs are poisoned
// before every launch and the slots past the written range are checked to stay poisoned. Without a GPU the
// device tests skip with the reason; the validation test runs everywhere (it never reaches CUDA).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "backend/cpu/linear.h"
#include "backend/cpu/ref_fp8_quant.h"
#include "backend/cuda/moe_layout.h"
#include "backend/cuda/moe_ops.h"
#include "core/error.h"
#include "core/tensor.h"
#include "moe_grouped_ref.h"
#include "ops_common.h"

namespace k2::ops_test {
namespace {

constexpr int32_t kIntPoison = 0x7F7F7F7F;  // fill_bytes(0x7F): distinct from every value the permute writes (-1 too)

class CudaMoeOps : public ::testing::Test {
protected:
    void SetUp() override {
        if (cuda::cuda_device_count() == 0) {
            GTEST_SKIP() << "no CUDA device: the CUDA op tests need a GPU (run them on the H200)";
        }
    }
};

// Router-like choice: top_k distinct experts per token, drawn from a random pool of pool_size experts (0: all).
std::vector<int32_t> random_topk_ids(int64_t num_tokens, int top_k, int num_experts, std::mt19937& rng,
                                     int pool_size = 0) {
    std::vector<int32_t> all(static_cast<size_t>(num_experts));
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int32_t> pool(all.begin(), all.begin() + (pool_size > 0 ? pool_size : num_experts));
    std::vector<int32_t> ids;
    for (int64_t t = 0; t < num_tokens; ++t) {
        for (int j = 0; j < top_k; ++j) {
            std::uniform_int_distribution<size_t> pick(static_cast<size_t>(j), pool.size() - 1);
            std::swap(pool[static_cast<size_t>(j)], pool[pick(rng)]);
            ids.push_back(pool[static_cast<size_t>(j)]);
        }
    }
    return ids;
}

// Ids drawn with replacement (a token may repeat an expert): the permute must not care.
std::vector<int32_t> random_ids_with_repeats(int64_t num_pairs, int num_experts, std::mt19937& rng) {
    std::uniform_int_distribution<int32_t> dist(0, num_experts - 1);
    std::vector<int32_t> ids(static_cast<size_t>(num_pairs));
    for (auto& id : ids)
        id = dist(rng);
    return ids;
}

// The reference permutation: std::stable_sort of the valid pair indices by expert.
struct HostPermute {
    std::vector<int32_t> offsets;    // [num_experts + 1]
    std::vector<int32_t> row_token;  // [valid pairs]
    std::vector<int32_t> pair_row;   // [num_tokens * top_k], -1 for an id outside [0, num_experts)
};

// expert_begin: the local experts are global ids [expert_begin, + num_experts) (expert parallelism).
HostPermute host_permute(std::vector<int32_t> ids, int top_k, int num_experts, int expert_begin = 0) {
    HostPermute out;
    std::vector<int32_t> order;
    for (size_t i = 0; i < ids.size(); ++i) {
        ids[i] -= expert_begin;
        if (ids[i] >= 0 && ids[i] < num_experts)
            order.push_back(static_cast<int32_t>(i));
    }
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return ids[a] < ids[b]; });
    out.offsets.assign(static_cast<size_t>(num_experts + 1), 0);
    for (const int32_t i : order)
        ++out.offsets[static_cast<size_t>(ids[i] + 1)];
    std::partial_sum(out.offsets.begin(), out.offsets.end(), out.offsets.begin());
    out.pair_row.assign(ids.size(), -1);
    out.row_token.resize(order.size());
    for (size_t r = 0; r < order.size(); ++r) {
        out.row_token[r] = order[r] / top_k;
        out.pair_row[static_cast<size_t>(order[r])] = static_cast<int32_t>(r);
    }
    return out;
}

// ---- permute ----

// got[0, want.size()) == want, reporting the first mismatch and the count (not two 65536-element vectors).
void expect_prefix_equal(const std::vector<int32_t>& got, const std::vector<int32_t>& want, const char* what) {
    ASSERT_GE(got.size(), want.size());
    size_t mismatches = 0;
    size_t first = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        if (got[i] != want[i] && mismatches++ == 0)
            first = i;
    }
    EXPECT_EQ(mismatches, 0u) << what << ": first mismatch at " << first << " (got " << got[first] << ", want "
                              << want[first] << ")";
}

void check_permute(int64_t num_tokens, int top_k, int num_experts, const std::vector<int32_t>& ids,
                   int expert_begin = 0) {
    SCOPED_TRACE("permute tokens " + std::to_string(num_tokens) + " top_k " + std::to_string(top_k) + " experts " +
                 std::to_string(num_experts) + " from " + std::to_string(expert_begin));
    const auto num_pairs = static_cast<size_t>(num_tokens * top_k);
    ASSERT_EQ(ids.size(), num_pairs);
    const HostPermute ref = host_permute(ids, top_k, num_experts, expert_begin);
    const auto ids_dev = to_device(ids);                                       // [num_tokens, top_k]
    cuda::DeviceBuffer offsets_dev(static_cast<size_t>(num_experts + 2) * 4);  // one poisoned slot past the end
    cuda::DeviceBuffer row_token_dev((num_pairs + 1) * 4);
    cuda::DeviceBuffer pair_row_dev((num_pairs + 1) * 4);
    offsets_dev.fill_bytes(0x7F);
    row_token_dev.fill_bytes(0x7F);
    pair_row_dev.fill_bytes(0x7F);
    cuda::MoePermuteParams p;
    p.topk_ids = ids_dev.as<int32_t>();
    p.offsets = offsets_dev.as<int32_t>();
    p.row_token = row_token_dev.as<int32_t>();
    p.pair_row = pair_row_dev.as<int32_t>();
    p.num_tokens = num_tokens;
    p.top_k = top_k;
    p.num_experts = num_experts;
    p.expert_begin = expert_begin;
    cuda::launch_moe_permute(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto offsets = to_host<int32_t>(offsets_dev, static_cast<size_t>(num_experts + 2));
    const auto row_token = to_host<int32_t>(row_token_dev, num_pairs + 1);
    const auto pair_row = to_host<int32_t>(pair_row_dev, num_pairs + 1);
    if (num_tokens == 0) {  // a no-op: nothing written
        for (const int32_t v : offsets)
            ASSERT_EQ(v, kIntPoison);
        for (const int32_t v : row_token)
            ASSERT_EQ(v, kIntPoison);
        return;
    }
    expect_prefix_equal(offsets, ref.offsets, "offsets");
    EXPECT_EQ(offsets.back(), kIntPoison) << "offsets written past num_experts";
    const size_t num_valid = ref.row_token.size();
    expect_prefix_equal(row_token, ref.row_token, "row_token");
    for (size_t r = num_valid; r <= num_pairs; ++r)
        EXPECT_EQ(row_token[r], kIntPoison) << "row_token " << r;
    expect_prefix_equal(pair_row, ref.pair_row, "pair_row");
    EXPECT_EQ(pair_row.back(), kIntPoison) << "pair_row written past the last pair";
}

TEST_F(CudaMoeOps, Permute) {
    std::mt19937 rng(11);
    for (const int64_t t : {1, 3, 16, 64, 257}) {  // decode sizes and a non-multiple of the 32-pair step
        check_permute(t, 8, 384, random_topk_ids(t, 8, 384, rng));
    }
    check_permute(8192, 8, 384, random_topk_ids(8192, 8, 384, rng));      // P = 65536, the prefill bound
    check_permute(8192, 8, 384, random_topk_ids(8192, 8, 384, rng, 12));  // few experts: long runs per warp
    check_permute(37, 4, 16, random_topk_ids(37, 4, 16, rng));
    check_permute(100, 6, 512, random_topk_ids(100, 6, 512, rng));       // the maximum expert count
    check_permute(500, 8, 7, random_ids_with_repeats(500 * 8, 7, rng));  // repeats inside a token
    check_permute(5, 2, 1, std::vector<int32_t>(10, 0));                 // one expert
    check_permute(3000, 1, 384, std::vector<int32_t>(3000, 383));        // everything on the last expert
    check_permute(0, 8, 384, {});
    // Expert parallelism: this rank holds 192 (or 96) of the 384 experts; pairs of the others get no row.
    for (const int64_t t : {1, 16, 300}) {
        check_permute(t, 8, 192, random_topk_ids(t, 8, 384, rng), 192);
        check_permute(t, 8, 96, random_topk_ids(t, 8, 384, rng), 96);
    }
}

TEST_F(CudaMoeOps, PermuteInvalidIds) {
    // Ids outside [0, num_experts) get no row (pair_row -1) and are not counted in offsets[num_experts].
    std::vector<int32_t> ids = {3, -1, 5, 3, 16, 0, 15, 3};
    check_permute(4, 2, 16, ids);
}

// ---- scale relayout (moe_layout.h) ----

// [groups, P] token-contiguous scales -> expert-blocked: expert e's block at offsets[e] * groups, [groups, n_e].
// Rows past offsets[num_experts] (pairs of another rank's experts) must stay untouched.
void check_scales_to_expert_blocked(int64_t num_tokens, int top_k, int num_experts, int expert_begin, int64_t groups,
                                    std::mt19937& rng) {
    SCOPED_TRACE("scale layout tokens " + std::to_string(num_tokens) + " experts " + std::to_string(num_experts) +
                 " from " + std::to_string(expert_begin));
    const HostPermute ref =
        host_permute(random_topk_ids(num_tokens, top_k, 384, rng), top_k, num_experts, expert_begin);
    const int64_t rows = num_tokens * top_k;                                                  // P
    const auto scale = random_uniform(static_cast<size_t>(groups * rows), rng, 1e-3f, 1.0f);  // [groups, P]
    std::vector<float> want(static_cast<size_t>(groups * rows), std::nanf(""));
    const int64_t valid = ref.offsets.back();
    for (int64_t r = 0; r < valid; ++r) {
        const auto e =
            static_cast<size_t>(std::upper_bound(ref.offsets.begin(), ref.offsets.end(), static_cast<int32_t>(r)) -
                                ref.offsets.begin() - 1);
        const int64_t begin = ref.offsets[e];
        const int64_t n_e = ref.offsets[e + 1] - begin;
        for (int64_t g = 0; g < groups; ++g)
            want[static_cast<size_t>(begin * groups + g * n_e + (r - begin))] =
                scale[static_cast<size_t>(g * rows + r)];
    }
    const auto scale_dev = to_device(scale);
    const auto offsets_dev = to_device(ref.offsets);
    cuda::DeviceBuffer out_dev(static_cast<size_t>(groups * rows) * 4);
    out_dev.fill_bytes(0xFF);
    cuda::MoeScaleLayoutParams p;
    p.scale = scale_dev.as<float>();
    p.offsets = offsets_dev.as<int32_t>();
    p.out = out_dev.as<float>();
    p.num_rows = rows;
    p.num_groups = groups;
    p.num_experts = num_experts;
    cuda::launch_moe_scales_to_expert_blocked(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto out = to_host<uint32_t>(out_dev, static_cast<size_t>(groups * rows));
    for (size_t i = 0; i < out.size(); ++i) {
        uint32_t bits = 0xFFFFFFFFu;  // untouched (poison) where no valid row maps
        if (i < static_cast<size_t>(valid * groups))
            std::memcpy(&bits, &want[i], 4);
        ASSERT_EQ(out[i], bits) << "scale slot " << i << " of " << out.size() << " (" << valid << " valid rows)";
    }
}

TEST_F(CudaMoeOps, ScalesToExpertBlocked) {
    std::mt19937 rng(21);
    check_scales_to_expert_blocked(16, 8, 384, 0, 16, rng);  // expert down at decode: k = 2048
    check_scales_to_expert_blocked(3, 8, 384, 0, 16, rng);
    check_scales_to_expert_blocked(257, 8, 384, 0, 3, rng);
    check_scales_to_expert_blocked(16, 8, 192, 192, 16, rng);  // EP over 2 ranks: about half the rows are remote
    check_scales_to_expert_blocked(64, 8, 48, 96, 16, rng);    // EP over 8 ranks
}

// ---- gather ----

void check_gather(int64_t num_tokens, int top_k, int num_experts, int64_t k, const std::vector<int32_t>& ids,
                  std::mt19937& rng) {
    SCOPED_TRACE("gather tokens " + std::to_string(num_tokens) + " k " + std::to_string(k));
    const HostPermute ref = host_permute(ids, top_k, num_experts);
    const int64_t num_kb = k / 128;
    const auto num_rows = static_cast<int64_t>(ids.size());               // P (every id valid here)
    const int64_t scale_stride = num_tokens + 3;                          // not num_tokens: the stride must be honoured
    const auto x = random_fp8(static_cast<size_t>(num_tokens * k), rng);  // [num_tokens, k]
    const auto xs = random_uniform(static_cast<size_t>(num_kb * scale_stride), rng, 1e-3f, 1.0f);
    std::vector<uint8_t> out_ref(static_cast<size_t>(num_rows * k));
    std::vector<float> scale_ref(static_cast<size_t>(num_rows * num_kb));
    for (int e = 0; e < num_experts; ++e) {
        const int64_t begin = ref.offsets[static_cast<size_t>(e)];
        const int64_t rows = ref.offsets[static_cast<size_t>(e + 1)] - begin;
        for (int64_t j = 0; j < rows; ++j) {
            const int64_t t = ref.row_token[static_cast<size_t>(begin + j)];
            std::copy_n(x.begin() + t * k, k, out_ref.begin() + (begin + j) * k);
            for (int64_t kb = 0; kb < num_kb; ++kb) {
                const auto at = static_cast<size_t>(begin * num_kb + kb * rows + j);
                scale_ref[at] = xs[static_cast<size_t>(kb * scale_stride + t)];
            }
        }
    }
    const auto x_dev = to_device(x);
    const auto xs_dev = to_device(xs);
    const auto row_token_dev = to_device(ref.row_token);
    const auto offsets_dev = to_device(ref.offsets);
    cuda::DeviceBuffer out_dev(static_cast<size_t>((num_rows + 1) * k));  // one poisoned row past the end
    cuda::DeviceBuffer scale_dev(static_cast<size_t>((num_rows + 1) * num_kb) * 4);
    out_dev.fill_bytes(0xFF);
    scale_dev.fill_bytes(0xFF);
    cuda::MoeGatherParams p;
    p.x = x_dev.as<uint8_t>();
    p.x_scale = xs_dev.as<float>();
    p.row_token = row_token_dev.as<int32_t>();
    p.offsets = offsets_dev.as<int32_t>();
    p.out = out_dev.as<uint8_t>();
    p.out_scale = scale_dev.as<float>();
    p.num_rows = num_rows;
    p.k = k;
    p.x_scale_stride = scale_stride;
    p.num_experts = num_experts;
    cuda::launch_moe_gather(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto out = to_host<uint8_t>(out_dev, static_cast<size_t>((num_rows + 1) * k));
    const auto scale = to_host<uint32_t>(scale_dev, static_cast<size_t>((num_rows + 1) * num_kb));
    ASSERT_TRUE(std::equal(out_ref.begin(), out_ref.end(), out.begin())) << "gathered e4m3 rows differ";
    for (size_t i = out_ref.size(); i < out.size(); ++i)
        ASSERT_EQ(out[i], 0xFF) << "out written past row P";
    for (size_t i = 0; i < scale_ref.size(); ++i) {
        uint32_t bits = 0;
        std::memcpy(&bits, &scale_ref[i], 4);
        ASSERT_EQ(scale[i], bits) << "expert-blocked scale " << i;
    }
    for (size_t i = scale_ref.size(); i < scale.size(); ++i)
        ASSERT_EQ(scale[i], 0xFFFFFFFFu) << "scale past P";
}

TEST_F(CudaMoeOps, Gather) {
    std::mt19937 rng(12);
    check_gather(3, 8, 384, 7168, random_topk_ids(3, 8, 384, rng), rng);
    check_gather(16, 8, 384, 7168, random_topk_ids(16, 8, 384, rng, 20), rng);
    check_gather(1, 8, 384, 2048, random_topk_ids(1, 8, 384, rng), rng);
    check_gather(100, 4, 16, 256, random_topk_ids(100, 4, 16, rng), rng);
    check_gather(300, 8, 384, 384, random_topk_ids(300, 8, 384, rng), rng);  // k / 128 = 3 scales per row
}

// ---- grouped FP8 GEMM ----

using moe_ref::fill_fast_fp8;

// One routed problem. Activations are quantized on the host and gathered there (moe_ops.h's layout, so this test
// does not depend on the gather kernel); only the touched experts' weights are written, the others stay 0xFF
// (e4m3 NaN: reading one would show); y_ref comes from cpu::linear per expert over the dequantized inputs.
struct GroupedProblem {
    int num_experts = 0;
    int64_t n = 0;
    int64_t k = 0;
    HostPermute perm;
    std::vector<float> y_ref;    // [P, n]
    cuda::DeviceBuffer x;        // [P, k] e4m3
    cuda::DeviceBuffer x_scale;  // [P * k / 128] f32, expert-blocked
    cuda::DeviceBuffer w;        // [num_experts, n, k] e4m3
    cuda::DeviceBuffer w_scale;  // [num_experts, n / 128, k / 128] f32
    cuda::DeviceBuffer offsets;  // [num_experts + 1]
    cuda::DeviceBuffer y;        // [P + 1, n] bf16: one poisoned row past the end
    int64_t num_rows() const { return static_cast<int64_t>(perm.row_token.size()); }
};

GroupedProblem make_grouped_problem(int64_t num_tokens, int top_k, int num_experts, int64_t n, int64_t k,
                                    const std::vector<int32_t>& ids, std::mt19937& rng) {
    GroupedProblem g;
    g.num_experts = num_experts;
    g.n = n;
    g.k = k;
    g.perm = host_permute(ids, top_k, num_experts);
    const int64_t num_kb = k / 128;
    const int64_t sn = n / 128;
    const int64_t num_rows = g.num_rows();
    const auto x = bf16_to_floats(random_bf16(static_cast<size_t>(num_tokens * k), rng));  // [num_tokens, k]
    std::vector<uint8_t> xq(x.size());
    std::vector<float> xs(static_cast<size_t>(num_kb * num_tokens));
    cpu::quantize_fp8_groups(x.data(), num_tokens, k, xq.data(), xs.data(), num_tokens);
    std::vector<float> x_deq(x.size());
    cpu::dequantize_fp8_groups(xq.data(), xs.data(), num_tokens, k, num_tokens, x_deq.data());
    std::vector<uint8_t> xg(static_cast<size_t>(num_rows * k));      // [P, k]
    std::vector<float> xg_deq(xg.size());                            // [P, k]
    std::vector<float> xsg(static_cast<size_t>(num_rows * num_kb));  // expert-blocked
    auto ws = random_uniform(static_cast<size_t>(num_experts * sn * num_kb), rng, 1e-4f, 4e-4f);
    g.w = cuda::DeviceBuffer(static_cast<size_t>(num_experts * n * k));
    g.w.fill_bytes(0xFF);
    g.y_ref.assign(static_cast<size_t>(num_rows * n), 0.0f);
    std::vector<uint8_t> w_e(static_cast<size_t>(n * k));  // [n, k] one expert at a time
    for (int e = 0; e < num_experts; ++e) {
        const int64_t begin = g.perm.offsets[static_cast<size_t>(e)];
        const int64_t rows = g.perm.offsets[static_cast<size_t>(e + 1)] - begin;
        if (rows == 0)
            continue;
        for (int64_t j = 0; j < rows; ++j) {
            const int64_t t = g.perm.row_token[static_cast<size_t>(begin + j)];
            std::copy_n(xq.begin() + t * k, k, xg.begin() + (begin + j) * k);
            std::copy_n(x_deq.begin() + t * k, k, xg_deq.begin() + (begin + j) * k);
            for (int64_t kb = 0; kb < num_kb; ++kb) {
                xsg[static_cast<size_t>(begin * num_kb + kb * rows + j)] = xs[static_cast<size_t>(kb * num_tokens + t)];
            }
        }
        fill_fast_fp8(w_e, (static_cast<uint64_t>(rng()) << 32) | rng());
        g.w.upload(w_e.data(), w_e.size(), static_cast<size_t>(e * n * k));
        const Tensor w_tensor = Tensor::view(DType::F8_E4M3, {n, k}, w_e.data());
        const Tensor s_tensor = Tensor::view(DType::F32, {sn, num_kb}, ws.data() + e * sn * num_kb);
        cpu::linear(xg_deq.data() + begin * k, rows, k, w_tensor, &s_tensor, g.y_ref.data() + begin * n);
    }
    g.x = to_device(xg);
    g.x_scale = to_device(xsg);
    g.w_scale = to_device(ws);
    g.offsets = to_device(g.perm.offsets);
    g.y = cuda::DeviceBuffer(static_cast<size_t>((num_rows + 1) * n) * 2);
    return g;
}

cuda::Fp8GroupedGemmParams grouped_params(const GroupedProblem& g, int64_t max_rows_per_expert) {
    return moe_ref::params_of(g, g.offsets, max_rows_per_expert);
}

// moe_ref::expect_matches: relative L2 < 1e-2 per expert and overall, finite rows, the row past P still poisoned.
void expect_grouped_matches(const GroupedProblem& g, const std::string& what) {
    moe_ref::expect_matches(g, g.perm.offsets, what);
}

// The decode launch's forms against the reference: the blocks, the persistent form (with and without L2 prefetch,
// which must change nothing: bitwise equal to the blocks, a slice is the same computation) and, up to 16 rows per
// expert, the k split over a block's warps (its own rounding: the reference, and bitwise equal on a repeat).
void check_grouped_decode(GroupedProblem& g, int64_t max_rows_per_expert) {
    struct Form {
        cuda::GroupedDecodeKernel kernel;
        int l2_ahead;
        int k_split;
        const char* name;
    };
    std::vector<Form> forms = {{cuda::GroupedDecodeKernel::Blocks, 0, 1, "blocks"},
                               {cuda::GroupedDecodeKernel::Persistent, 0, 1, "persistent"},
                               {cuda::GroupedDecodeKernel::Persistent, 8, 1, "persistent, L2 prefetch 8"}};
    if (max_rows_per_expert <= 16) {
        forms.push_back({cuda::GroupedDecodeKernel::Persistent, 4, 4, "k split"});
        forms.push_back({cuda::GroupedDecodeKernel::Persistent, 4, 4, "k split (repeat)"});
    }
    const size_t count = static_cast<size_t>((g.num_rows() + 1) * g.n);  // the row past P must stay poisoned too
    std::vector<uint16_t> blocks;
    std::vector<uint16_t> split;
    for (const Form& form : forms) {
        g.y.fill_bytes(0xFF);
        cuda::Fp8GroupedGemmParams p = grouped_params(g, max_rows_per_expert);
        p.decode_kernel = form.kernel;
        p.l2_ahead = form.l2_ahead;
        p.decode_k_split = form.k_split;
        cuda::launch_fp8_grouped_gemm_decode(p, nullptr);
        CUDA_CHECK(cudaDeviceSynchronize());
        expect_grouped_matches(g, fmt::format("decode ({}), max_rows_per_expert {}", form.name, max_rows_per_expert));
        const auto out = to_host<uint16_t>(g.y, count);
        std::vector<uint16_t>& first = form.k_split == 4 ? split : blocks;
        if (first.empty()) {
            first = out;
        } else {
            EXPECT_TRUE(out == first) << form.name << " differs bitwise from "
                                      << (form.k_split == 4 ? "the first k split" : "blocks");
        }
    }
}

void check_grouped_prefill(GroupedProblem& g, cuda::Fp8GemmRunner& runner) {
    g.y.fill_bytes(0xFF);
    cuda::run_fp8_grouped_gemm_prefill(runner, grouped_params(g, 0), g.perm.offsets.data(), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    expect_grouped_matches(g, "prefill form");
}

// The fixtures' expert shapes: tiny-kimi-k2 gate_up (n 256, k 256, 16 experts, top-4), small-dsv3 down (n 384,
// k 128: one k block, 64 experts, top-8) and small-dsv3 gate_up (n 256, k 384).
TEST_F(CudaMoeOps, GroupedGemmTiny) {
    struct Shape {
        int64_t n;
        int64_t k;
        int num_experts;
        int top_k;
    };
    std::mt19937 rng(13);
    cuda::Fp8GemmRunner runner;
    for (const Shape& s : {Shape{256, 256, 16, 4}, Shape{384, 128, 64, 8}, Shape{256, 384, 64, 8}}) {
        for (const int64_t t : {1, 3, 17}) {
            SCOPED_TRACE("n " + std::to_string(s.n) + " k " + std::to_string(s.k) + " tokens " + std::to_string(t));
            auto g = make_grouped_problem(t, s.top_k, s.num_experts, s.n, s.k,
                                          random_topk_ids(t, s.top_k, s.num_experts, rng), rng);
            check_grouped_decode(g, t);
            check_grouped_prefill(g, runner);
        }
    }
}

// Every token routes to expert 5 and tokens < 37 also to expert 3; the rest are random among the others.
std::vector<int32_t> skewed_ids(int64_t num_tokens, int top_k, int num_experts, std::mt19937& rng) {
    std::vector<int32_t> ids;
    for (int64_t t = 0; t < num_tokens; ++t) {
        std::vector<int32_t> others;
        for (int32_t e = 0; e < num_experts; ++e) {
            if (e != 5 && e != 3)
                others.push_back(e);
        }
        std::shuffle(others.begin(), others.end(), rng);
        std::vector<int32_t> row = {5};
        if (t < 37)
            row.push_back(3);
        for (size_t i = 0; static_cast<int>(row.size()) < top_k; ++i)
            row.push_back(others[i]);
        std::shuffle(row.begin(), row.end(), rng);
        ids.insert(ids.end(), row.begin(), row.end());
    }
    return ids;
}

// Experts with more than 64 rows: the decode kernel runs passes (of 64; of 16 and 8 when max_rows_per_expert
// understates the largest expert, which must not change the result); the prefill form gives the big experts to
// cuBLASLt at k = 512 (37 and ~19 rows: scale column strides that are not multiples of 4) and keeps k = 256 on our
// kernel (k / 128 not a multiple of 4).
TEST_F(CudaMoeOps, GroupedGemmPasses) {
    std::mt19937 rng(14);
    cuda::Fp8GemmRunner runner;
    for (const int64_t k : {512, 256}) {
        const int64_t n = k == 512 ? 256 : 384;
        SCOPED_TRACE("n " + std::to_string(n) + " k " + std::to_string(k));
        auto g = make_grouped_problem(100, 4, 16, n, k, skewed_ids(100, 4, 16, rng), rng);
        ASSERT_EQ(g.perm.offsets[6] - g.perm.offsets[5], 100);
        for (const int64_t max_rows : {100, 64, 9, 1}) {
            check_grouped_decode(g, max_rows);
        }
        check_grouped_prefill(g, runner);
    }
}

// Kimi-K2 expert shapes at decode sizes (host reference over the touched experts only): 3 tokens routed over
// all 384 experts (mostly one row each) and 16 tokens over a pool of 40 (~3 rows per expert); either way at least
// 89% of the 384 experts are empty.
TEST_F(CudaMoeOps, GroupedGemmKimiK2) {
    std::mt19937 rng(15);
    cuda::Fp8GemmRunner runner;
    const std::pair<int64_t, int64_t> shapes[] = {{4096, 7168}, {7168, 2048}};  // gate_up, down
    for (const auto& [n, k] : shapes) {
        SCOPED_TRACE("n " + std::to_string(n) + " k " + std::to_string(k));
        {
            auto g = make_grouped_problem(3, 8, 384, n, k, random_topk_ids(3, 8, 384, rng), rng);
            check_grouped_decode(g, 3);
            check_grouped_prefill(g, runner);
        }
        {
            auto g = make_grouped_problem(16, 8, 384, n, k, random_topk_ids(16, 8, 384, rng, 40), rng);
            check_grouped_decode(g, 16);
            check_grouped_prefill(g, runner);
        }
    }
}

// The concurrent prefill form (the model's MoE prefill): 1, 3 and 4 lanes, every expert of m % 16 != 0 rows on
// cuBLASLt through the padded scales (k = 512 and Kimi-K2's gate_up), so the padded rows of each range's last
// expert must go through the lane's y scratch, not onto the next lane's rows (a race: rel L2 ~1 for that expert).
// The x and y buffers get the 15 rows of slack the padded path reads and writes past P (the model's buffers have
// them); y is NaN-poisoned first.
void check_grouped_lanes(GroupedProblem& g, int num_lanes) {
    SCOPED_TRACE("lanes " + std::to_string(num_lanes));
    const int64_t num_rows = g.num_rows();
    cuda::DeviceBuffer x(static_cast<size_t>((num_rows + 16) * g.k));
    x.fill_bytes(0);
    CUDA_CHECK(cudaMemcpy(x.data(), g.x.data(), static_cast<size_t>(num_rows * g.k), cudaMemcpyDeviceToDevice));
    cuda::DeviceBuffer y(static_cast<size_t>((num_rows + 16) * g.n) * 2);
    y.fill_bytes(0xFF);
    int64_t max_rows = 0;
    for (int e = 0; e < g.num_experts; ++e) {
        max_rows = std::max<int64_t>(
            max_rows, g.perm.offsets[static_cast<size_t>(e + 1)] - g.perm.offsets[static_cast<size_t>(e)]);
    }
    const moe_ref::Lanes lanes(num_lanes, g.n, g.k, max_rows);
    cuda::Fp8GroupedGemmParams p = grouped_params(g, 0);
    p.x = x.as<uint8_t>();
    p.y = y.as<uint16_t>();
    cuda::run_fp8_grouped_gemm_prefill_lanes(lanes.lanes, p, g.perm.offsets.data(), nullptr, lanes.fork);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto out = to_host<uint16_t>(y, static_cast<size_t>(num_rows * g.n));
    std::vector<float> y_gpu(out.size());
    for (size_t i = 0; i < out.size(); ++i)
        y_gpu[i] = bf16_to_float(out[i]);
    for (int e = 0; e < g.num_experts; ++e) {
        const int64_t begin = g.perm.offsets[static_cast<size_t>(e)];
        const int64_t rows = g.perm.offsets[static_cast<size_t>(e + 1)] - begin;
        if (rows == 0)
            continue;
        const size_t at = static_cast<size_t>(begin * g.n);
        EXPECT_LT(rel_l2(y_gpu.data() + at, g.y_ref.data() + at, static_cast<size_t>(rows * g.n)), 1e-2)
            << "expert " << e << " (" << rows << " rows)";  // NaN (unwritten or clobbered) fails too
    }
}

TEST_F(CudaMoeOps, GroupedGemmPrefillLanes) {
    std::mt19937 rng(16);
    {
        auto g = make_grouped_problem(100, 4, 16, 256, 512, random_topk_ids(100, 4, 16, rng), rng);
        for (const int lanes : {1, 3, 4})
            check_grouped_lanes(g, lanes);
    }
    {
        auto g = make_grouped_problem(32, 8, 384, 4096, 7168, random_topk_ids(32, 8, 384, rng, 16), rng);
        check_grouped_lanes(g, 4);
    }
}

TEST_F(CudaMoeOps, GroupedGemmNoTokens) {
    const moe_ref::EmptyProblem empty;
    const std::vector<int32_t> host_offsets(moe_ref::EmptyProblem::kExperts + 1, 0);
    cuda::Fp8GroupedGemmParams p = empty.params(0);
    cuda::launch_fp8_grouped_gemm_decode(p, nullptr);  // bound 0: the host knows, a no-op
    p.max_rows_per_expert = 4;  // a captured graph's bound with no rows this step: every block exits
    cuda::launch_fp8_grouped_gemm_decode(p, nullptr);
    cuda::Fp8GemmRunner runner;
    cuda::run_fp8_grouped_gemm_prefill(runner, p, host_offsets.data(), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    for (const uint16_t v : to_host<uint16_t>(empty.y, 256))
        ASSERT_EQ(v, 0xFFFF) << "y written with no rows";
}

// ---- combine ----

// pair_row [num_tokens, top_k] into y [num_rows, hidden]. Reference: fp32 sum in k order, shared last; the GPU
// rounds once to bf16, so relative L2 < 4e-3 (bf16 rounding is ~1e-3 RMS; a wrong row or weight lands near 1).
void check_combine(int64_t num_tokens, int top_k, int64_t hidden, const std::vector<int32_t>& pair_row,
                   int64_t num_rows, bool with_shared, std::mt19937& rng) {
    SCOPED_TRACE("combine tokens " + std::to_string(num_tokens) + " hidden " + std::to_string(hidden) +
                 (with_shared ? " shared" : ""));
    const auto y = random_bf16(static_cast<size_t>(num_rows * hidden), rng);  // [P, hidden]
    const auto weights = random_uniform(static_cast<size_t>(num_tokens * top_k), rng, 0.0f, 1.0f);
    const auto shared = random_bf16(static_cast<size_t>(num_tokens * hidden), rng);  // [num_tokens, hidden]
    std::vector<float> ref(static_cast<size_t>(num_tokens * hidden));
    for (int64_t t = 0; t < num_tokens; ++t) {
        for (int64_t c = 0; c < hidden; ++c) {
            float acc = 0.0f;
            for (int j = 0; j < top_k; ++j) {
                const int64_t row = pair_row[static_cast<size_t>(t * top_k + j)];
                if (row < 0)
                    continue;
                const float v = bf16_to_float(y[static_cast<size_t>(row * hidden + c)]);
                acc += weights[static_cast<size_t>(t * top_k + j)] * v;
            }
            if (with_shared)
                acc += bf16_to_float(shared[static_cast<size_t>(t * hidden + c)]);
            ref[static_cast<size_t>(t * hidden + c)] = acc;
        }
    }
    const auto y_dev = to_device(y);
    const auto pair_row_dev = to_device(pair_row);
    const auto weights_dev = to_device(weights);
    const auto shared_dev = to_device(shared);
    cuda::DeviceBuffer out_dev(static_cast<size_t>((num_tokens + 1) * hidden) * 2);  // one poisoned row past the end
    out_dev.fill_bytes(0xFF);
    cuda::MoeCombineParams p;
    p.y = y_dev.as<uint16_t>();
    p.pair_row = pair_row_dev.as<int32_t>();
    p.topk_weights = weights_dev.as<float>();
    p.shared = with_shared ? shared_dev.as<uint16_t>() : nullptr;
    p.out = out_dev.as<uint16_t>();
    p.num_tokens = num_tokens;
    p.hidden = hidden;
    p.top_k = top_k;
    cuda::launch_moe_combine(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto out = to_host<uint16_t>(out_dev, static_cast<size_t>((num_tokens + 1) * hidden));
    std::vector<float> out_gpu(ref.size());
    for (size_t i = 0; i < ref.size(); ++i)
        out_gpu[i] = bf16_to_float(out[i]);
    EXPECT_LT(rel_l2(out_gpu.data(), ref.data(), ref.size()), 4e-3);
    for (size_t i = ref.size(); i < out.size(); ++i)
        ASSERT_EQ(out[i], 0xFFFF) << "out written past the last token";
}

TEST_F(CudaMoeOps, Combine) {
    std::mt19937 rng(16);
    const int64_t token_counts[] = {1, 3, 16, 64, 100};  // up to 64 the batched kernel, above the serial one
    for (const int64_t t : token_counts) {
        const HostPermute perm = host_permute(random_topk_ids(t, 8, 384, rng), 8, 384);
        const auto num_rows = static_cast<int64_t>(perm.row_token.size());
        check_combine(t, 8, 7168, perm.pair_row, num_rows, true, rng);
        check_combine(t, 8, 7168, perm.pair_row, num_rows, false, rng);
    }
    // hidden not a multiple of the 2048 columns of a block; top_k 4
    const HostPermute perm = host_permute(random_topk_ids(5, 4, 16, rng), 4, 16);
    check_combine(5, 4, 264, perm.pair_row, 20, true, rng);
    // pairs the permute gave no row (invalid ids) contribute nothing
    check_combine(2, 2, 16, {0, -1, 2, 1}, 3, true, rng);
}

// The reference walks each replica's forward rows and places them where its TP ranks send them (the kernel goes the
// other way, from a gathered row to its replica): a row keeps its ids only if it is one of its replica's real tokens.
std::vector<int32_t> host_ep_drop(std::vector<int32_t> ids, const std::vector<int32_t>& counts, int dp, int tp,
                                  int64_t slice_rows, int top_k) {
    std::vector<bool> real(static_cast<size_t>(dp * tp * slice_rows), false);
    for (int d = 0; d < dp; ++d) {
        const int64_t rows = counts[static_cast<size_t>(dp + d)];
        EXPECT_LE(counts[static_cast<size_t>(d)], rows) << "replica " << d << ": more real tokens than forward rows";
        for (int64_t x = 0; x < std::min<int64_t>(counts[static_cast<size_t>(d)], rows); ++x) {
            int r = 0;
            while (x >= rows * (r + 1) / tp) {
                ++r;
            }
            real[static_cast<size_t>((d * tp + r) * slice_rows + x - rows * r / tp)] = true;
        }
    }
    for (size_t i = 0; i < ids.size(); ++i) {
        if (!real[i / static_cast<size_t>(top_k)]) {
            ids[i] = -1;
        }
    }
    return ids;
}

TEST_F(CudaMoeOps, EpDropPadding) {
    std::mt19937 rng(17);
    struct Case {
        int dp, tp;
        std::vector<int32_t> counts;  // n_d..., T_d...
        int64_t slice_rows;
    };
    const Case cases[] = {
        {2, 1, {40, 0, 40, 0}, 40},  // eager: an idle replica's zero rows
        {2, 1, {3, 1, 16, 16}, 16},  // a decode graph of 16: padding past the real tokens
        {2, 2, {5, 0, 8, 8}, 4},     // DP 2 x TP 2 graph of 8: replica 0's second half partly padding
        {2, 2, {7, 3, 7, 3}, 4},     // eager, odd counts: uneven TP slices, zero rows at the ends
        {4, 2, {1, 0, 16, 9, 16, 16, 16, 16}, 8},
        {8, 1, {0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1}, 1},  // one token in the whole job
    };
    for (const Case& c : cases) {
        ASSERT_EQ(c.counts.size(), static_cast<size_t>(2 * c.dp));
        const int top_k = 8;
        const int64_t pairs = int64_t{c.dp} * c.tp * c.slice_rows * top_k;
        std::vector<int32_t> ids(static_cast<size_t>(pairs));
        std::uniform_int_distribution<int32_t> expert(0, 383);
        for (int32_t& id : ids) {
            id = expert(rng);
        }
        cuda::DeviceBuffer d_ids = to_device(ids);
        cuda::DeviceBuffer d_counts = to_device(c.counts);
        cuda::MoeEpDropParams p;
        p.topk_ids = d_ids.as<int32_t>();
        p.counts = d_counts.as<int32_t>();
        p.dp = c.dp;
        p.tp = c.tp;
        p.slice_rows = c.slice_rows;
        p.top_k = top_k;
        cuda::launch_moe_ep_drop_padding(p, nullptr);
        EXPECT_EQ(to_host<int32_t>(d_ids, ids.size()), host_ep_drop(ids, c.counts, c.dp, c.tp, c.slice_rows, top_k))
            << "dp " << c.dp << " tp " << c.tp << " slice_rows " << c.slice_rows;
    }
}

// Validation runs on the host before any CUDA call, so this test needs no GPU.
TEST(MoeOpsValidation, RejectsBadShapesAndSkipsEmptyInputs) {
    cuda::MoePermuteParams perm;
    perm.num_tokens = 4;
    perm.top_k = 2;
    perm.num_experts = 513;
    EXPECT_THROW(cuda::launch_moe_permute(perm, nullptr), Error);  // more experts than the kernel's 512
    perm.num_experts = 16;
    EXPECT_THROW(cuda::launch_moe_permute(perm, nullptr), Error);  // null pointers
    perm.num_tokens = 0;
    EXPECT_NO_THROW(cuda::launch_moe_permute(perm, nullptr));

    cuda::MoeGatherParams gather;
    gather.num_rows = 4;
    gather.k = 100;
    gather.num_experts = 16;
    EXPECT_THROW(cuda::launch_moe_gather(gather, nullptr), Error);  // k not a multiple of 128
    gather.num_rows = 0;
    EXPECT_NO_THROW(cuda::launch_moe_gather(gather, nullptr));

    cuda::Fp8GroupedGemmParams gemm;
    gemm.num_experts = 16;
    gemm.n = 200;
    gemm.k = 256;
    gemm.max_rows_per_expert = 4;
    EXPECT_THROW(cuda::launch_fp8_grouped_gemm_decode(gemm, nullptr), Error);  // n not a multiple of 128
    gemm.n = 256;
    EXPECT_THROW(cuda::launch_fp8_grouped_gemm_decode(gemm, nullptr), Error);  // null operands
    gemm.max_rows_per_expert = 0;
    EXPECT_NO_THROW(cuda::launch_fp8_grouped_gemm_decode(gemm, nullptr));

    cuda::MoeCombineParams combine;
    combine.num_tokens = 2;
    combine.top_k = 2;
    combine.hidden = 7;
    EXPECT_THROW(cuda::launch_moe_combine(combine, nullptr), Error);  // hidden not a multiple of 8
    combine.num_tokens = 0;
    EXPECT_NO_THROW(cuda::launch_moe_combine(combine, nullptr));

    cuda::MoeEpDropParams drop;
    drop.dp = 2;
    drop.tp = 0;
    drop.slice_rows = 4;
    drop.top_k = 8;
    EXPECT_THROW(cuda::launch_moe_ep_drop_padding(drop, nullptr), Error);  // tp 0
    drop.tp = 1;
    EXPECT_THROW(cuda::launch_moe_ep_drop_padding(drop, nullptr), Error);  // null pointers
    drop.slice_rows = 0;
    EXPECT_NO_THROW(cuda::launch_moe_ep_drop_padding(drop, nullptr));
}

}  // namespace
}  // namespace k2::ops_test

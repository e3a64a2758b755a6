// Decode context parallelism's GPU pieces against the CPU references of dist/dcp.h:
// - the general MLA attention with an lse output over a rank's token shard (block size 64 / dcp; positions -1 for a
//   query that sees none of this rank's tokens) vs dist::partial_attention on the same bf16 / e4m3 cache values;
// - the merge of all-gathered partials (dcp_merge.h) vs dist::merge_partial_attention, with -inf / NaN / +inf lses.
// Outputs are NaN-poisoned first, with a poisoned row past the end that must stay untouched.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "backend/cuda/dcp_merge.h"
#include "backend/cuda/mla_ops.h"
#include "core/tensor.h"
#include "dist/dcp.h"
#include "ops_common.h"

namespace k2::ops_test {
namespace {

class MlaDcp : public ::testing::Test {
protected:
    void SetUp() override {
        if (cuda::cuda_device_count() == 0) {
            GTEST_SKIP() << "no CUDA device: the CUDA op tests need a GPU (they run on the H200)";
        }
    }
};

double row_rel_l2(const float* a, const float* b, int n) {
    double num = 0.0;
    double den = 0.0;
    for (int i = 0; i < n; ++i) {
        num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
        den += static_cast<double>(b[i]) * b[i];
    }
    return std::sqrt(num / std::max(den, 1e-30));
}

struct ShardCase {
    int heads;
    int lat;
    int rope;
    int block_size;  // 64 / dcp
    bool fp8;
    std::vector<int> last_index;  // per query token (one sequence each): its last visible local key, -1 for none
};

// One sequence per query token over a shuffled paged cache; out (bf16) and lse against dist::partial_attention on
// the cache's values. Tolerances: as test_mla_ops' attention (relative L2 < 2e-2 per row: bf16 P and output), lse
// within 5e-3 (the bf16-rounded P perturbs the sum by ~2^-9 relative at most: ~2e-3 in ln); rows with no key are
// exactly 0 with lse -inf.
void check_shard_attention(const ShardCase& c, std::mt19937& rng) {
    SCOPED_TRACE("heads " + std::to_string(c.heads) + " lat " + std::to_string(c.lat) + " block " +
                 std::to_string(c.block_size) + (c.fp8 ? " fp8" : " bf16"));
    const int entry = c.lat + c.rope;
    const int bs = c.block_size;
    const auto num_tokens = static_cast<int64_t>(c.last_index.size());
    const int max_len = *std::max_element(c.last_index.begin(), c.last_index.end()) + 1;
    const int max_blocks = std::max(1, (max_len + bs - 1) / bs);
    const int num_blocks = static_cast<int>(num_tokens) * max_blocks + 2;
    const int64_t num_slots = int64_t{num_blocks} * bs;
    const float kv_scale = c.fp8 ? 0.02f : 1.0f;
    std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    std::vector<int32_t> tables(static_cast<size_t>(num_tokens * max_blocks));
    std::copy_n(ids.begin(), tables.size(), tables.begin());
    const size_t elem = c.fp8 ? 1 : 2;
    std::vector<uint8_t> cache(static_cast<size_t>(num_slots * entry) * elem);
    std::vector<float> values(static_cast<size_t>(num_slots * entry));  // what the cache holds, as floats
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (size_t i = 0; i < values.size(); ++i) {
        if (c.fp8) {
            cache[i] = float_to_fp8_e4m3(dist(rng) / kv_scale);
            values[i] = fp8_e4m3_to_float(cache[i]) * kv_scale;
        } else {
            const uint16_t v = float_to_bf16(dist(rng));
            std::memcpy(&cache[2 * i], &v, 2);
            values[i] = bf16_to_float(v);
        }
    }
    const auto q = random_bf16(static_cast<size_t>(num_tokens * c.heads * entry), rng);
    const auto q_f = bf16_to_floats(q);
    const float scale = 1.0f / std::sqrt(192.0f);

    std::vector<float> out_ref(static_cast<size_t>(num_tokens * c.heads * c.lat));
    std::vector<float> lse_ref(static_cast<size_t>(num_tokens * c.heads));
    std::vector<int32_t> token_seq(static_cast<size_t>(num_tokens));
    std::iota(token_seq.begin(), token_seq.end(), 0);
    for (int64_t t = 0; t < num_tokens; ++t) {
        const int n = c.last_index[static_cast<size_t>(t)] + 1;
        std::vector<float> k(static_cast<size_t>(n * entry));  // [n, entry]
        std::vector<float> v(static_cast<size_t>(n * c.lat));  // [n, lat]
        for (int j = 0; j < n; ++j) {
            const int64_t slot = int64_t{tables[static_cast<size_t>(t * max_blocks + j / bs)]} * bs + j % bs;
            std::copy_n(values.begin() + slot * entry, entry, k.begin() + int64_t{j} * entry);
            std::copy_n(values.begin() + slot * entry, c.lat, v.begin() + int64_t{j} * c.lat);
        }
        dist::partial_attention(
            std::span<const float>(q_f).subspan(static_cast<size_t>(t * c.heads * entry),
                                                static_cast<size_t>(c.heads * entry)),
            k, v, c.heads, entry, c.lat, scale,
            std::span(out_ref).subspan(static_cast<size_t>(t * c.heads * c.lat), static_cast<size_t>(c.heads * c.lat)),
            std::span(lse_ref).subspan(static_cast<size_t>(t * c.heads), static_cast<size_t>(c.heads)));
    }

    const auto q_dev = to_device(q);
    const auto cache_dev = to_device(cache);
    const auto tables_dev = to_device(tables);
    const auto seq_dev = to_device(token_seq);
    const auto pos_dev = to_device(c.last_index);
    const int64_t rows = num_tokens * c.heads;
    cuda::DeviceBuffer out_dev(static_cast<size_t>((rows + 1) * c.lat) * 2);  // [rows + 1 poisoned, lat]
    cuda::DeviceBuffer lse_dev(static_cast<size_t>(rows + 1) * 4);
    out_dev.fill_bytes(0xFF);
    lse_dev.fill_bytes(0xFF);
    cuda::MlaAttentionParams p;
    p.q = q_dev.as<uint16_t>();
    p.cache = cuda::LatentCacheRef{cache_dev.data(), c.fp8, kv_scale, num_slots};
    p.block_tables = tables_dev.as<int32_t>();
    p.token_seq = seq_dev.as<int32_t>();
    p.positions = pos_dev.as<int32_t>();
    p.out = out_dev.as<uint16_t>();
    p.lse = lse_dev.as<float>();
    p.num_tokens = num_tokens;
    p.heads = c.heads;
    p.lat = c.lat;
    p.rope = c.rope;
    p.block_size = bs;
    p.max_blocks_per_seq = max_blocks;
    p.max_context = max_len;
    p.softmax_scale = scale;
    cuda::launch_mla_attention(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto out_bits = to_host<uint16_t>(out_dev, static_cast<size_t>((rows + 1) * c.lat));
    const auto lse = to_host<float>(lse_dev, static_cast<size_t>(rows + 1));
    for (int64_t r = 0; r < rows; ++r) {
        const int last = c.last_index[static_cast<size_t>(r / c.heads)];
        std::vector<float> got(static_cast<size_t>(c.lat));
        for (int d = 0; d < c.lat; ++d)
            got[static_cast<size_t>(d)] = bf16_to_float(out_bits[static_cast<size_t>(r * c.lat + d)]);
        const float* want = out_ref.data() + r * c.lat;
        if (last < 0) {
            for (const float g : got)
                ASSERT_EQ(g, 0.0f) << "row " << r << " has no key: its output must be 0";
            ASSERT_EQ(lse[static_cast<size_t>(r)], -std::numeric_limits<float>::infinity()) << "row " << r;
            continue;
        }
        ASSERT_LT(row_rel_l2(got.data(), want, c.lat), 2e-2) << "row " << r << " (last key " << last << ")";
        ASSERT_NEAR(lse[static_cast<size_t>(r)], lse_ref[static_cast<size_t>(r)], 5e-3) << "row " << r;
    }
    for (int d = 0; d < c.lat; ++d)
        ASSERT_EQ(out_bits[static_cast<size_t>(rows * c.lat + d)], 0xFFFF) << "wrote past the output";
    uint32_t past = 0;
    std::memcpy(&past, &lse[static_cast<size_t>(rows)], 4);
    ASSERT_EQ(past, 0xFFFFFFFFu) << "wrote past the lse";
}

TEST_F(MlaDcp, ShardAttentionWithLse) {
    std::mt19937 rng(31);
    // Kimi-K2 latent, a TP rank's 32 heads gathered over DCP 2 (64), block 32; and DCP 4 (block 16) of 8 heads.
    const std::vector<int> last = {0, 31, 32, 100, -1, 4095, 7, -1};
    for (const bool fp8 : {false, true}) {
        check_shard_attention({64, 512, 64, 32, fp8, last}, rng);
        check_shard_attention({16, 512, 64, 16, fp8, {3, -1, 200}}, rng);
        check_shard_attention({8, 128, 32, 32, fp8, {-1, 0, 19, 63, 64}}, rng);  // tiny-model shape
    }
    check_shard_attention({64, 512, 64, 32, false, {-1}}, rng);  // a lone empty row
}

// [P, T, G, lat] partials + [P, T, G] lses (P = dcp ranks x key ranges) -> this rank's [T, heads, lat], vs
// dist::merge_partial_attention.
void check_merge(int dcp, int rank, int heads, int lat, int64_t num_tokens, std::mt19937& rng, int partials = 0) {
    SCOPED_TRACE("dcp " + std::to_string(dcp) + " rank " + std::to_string(rank) + " heads " + std::to_string(heads) +
                 " tokens " + std::to_string(num_tokens) + " partials " + std::to_string(partials));
    const int num_partials = partials > 0 ? partials : dcp;
    const int group = dcp * heads;
    const auto outs = random_bf16(static_cast<size_t>(num_partials * num_tokens * group * lat), rng);
    const auto outs_f = bf16_to_floats(outs);
    std::vector<float> lses = random_uniform(static_cast<size_t>(num_partials * num_tokens * group), rng, -3.0f, 12.0f);
    const float inf = std::numeric_limits<float>::infinity();
    // Special values: a rank without tokens (-inf), vLLM's NaN / +inf rule, and one head no rank saw.
    lses[0] = -inf;
    if (lses.size() > 5) {
        lses[3] = std::nanf("");
        lses[5] = inf;
    }
    for (int d = 0; d < num_partials; ++d)
        lses[static_cast<size_t>((d * num_tokens + num_tokens - 1) * group + rank * heads)] = -inf;
    std::vector<float> want(static_cast<size_t>(num_tokens * heads * lat));
    std::vector<float> part(static_cast<size_t>(num_partials * group * lat));  // [P, G, lat] of one token
    std::vector<float> part_lse(static_cast<size_t>(num_partials * group));
    std::vector<float> merged(static_cast<size_t>(group * lat));
    std::vector<float> merged_lse(static_cast<size_t>(group));
    std::vector<float> want_lse(static_cast<size_t>(num_tokens * heads));
    for (int64_t t = 0; t < num_tokens; ++t) {
        for (int d = 0; d < num_partials; ++d) {
            std::copy_n(outs_f.begin() + ((d * num_tokens + t) * group) * lat, group * lat,
                        part.begin() + int64_t{d} * group * lat);
            std::copy_n(lses.begin() + (d * num_tokens + t) * group, group, part_lse.begin() + int64_t{d} * group);
        }
        dist::merge_partial_attention(part, part_lse, num_partials, group, lat, merged, merged_lse);
        std::copy_n(merged.begin() + int64_t{rank} * heads * lat, heads * lat, want.begin() + t * heads * lat);
        std::copy_n(merged_lse.begin() + int64_t{rank} * heads, heads, want_lse.begin() + t * heads);
    }
    const auto outs_dev = to_device(outs);
    const auto lses_dev = to_device(lses);
    const int64_t size = num_tokens * heads * lat;
    cuda::DeviceBuffer out_dev(static_cast<size_t>(size + lat) * 2);
    cuda::DeviceBuffer lse_dev(static_cast<size_t>(num_tokens * heads + 1) * 4);  // one poisoned slot past the end
    out_dev.fill_bytes(0xFF);
    lse_dev.fill_bytes(0xFF);
    cuda::DcpMergeParams p;
    p.outs = outs_dev.as<uint16_t>();
    p.lses = lses_dev.as<float>();
    p.out = out_dev.as<uint16_t>();
    p.lse_out = lse_dev.as<float>();
    p.num_tokens = num_tokens;
    p.num_partials = partials;
    p.dcp = dcp;
    p.rank = rank;
    p.heads = heads;
    p.lat = lat;
    cuda::launch_dcp_merge(p, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto bits = to_host<uint16_t>(out_dev, static_cast<size_t>(size + lat));
    std::vector<float> got(static_cast<size_t>(size));
    for (size_t i = 0; i < got.size(); ++i)
        got[i] = bf16_to_float(bits[i]);
    for (int64_t r = 0; r < num_tokens * heads; ++r) {
        // bf16 inputs are exact in both; the GPU sums in fp32 and rounds once (2^-9 relative).
        ASSERT_LT(row_rel_l2(got.data() + r * lat, want.data() + r * lat, lat), 5e-3) << "row " << r;
        for (int d = 0; d < lat; ++d)
            ASSERT_FALSE(std::isnan(got[static_cast<size_t>(r * lat + d)])) << "NaN in row " << r;
    }
    for (int d = 0; d < lat; ++d)
        ASSERT_EQ(bits[static_cast<size_t>(size + d)], 0xFFFF) << "wrote past the output";
    // The merged lse (the input of a later merge: split-KV ranges first, then the ranks): fp32 vs double.
    const auto lse = to_host<float>(lse_dev, static_cast<size_t>(num_tokens * heads + 1));
    for (size_t i = 0; i < want_lse.size(); ++i) {
        if (std::isinf(want_lse[i]))
            ASSERT_EQ(lse[i], want_lse[i]) << "lse " << i;
        else
            ASSERT_NEAR(lse[i], want_lse[i], 1e-4f * std::max(1.0f, std::fabs(want_lse[i]))) << "lse " << i;
    }
    uint32_t past = 0;
    std::memcpy(&past, &lse[want_lse.size()], 4);
    ASSERT_EQ(past, 0xFFFFFFFFu) << "wrote past the lse";
}

TEST_F(MlaDcp, MergePartials) {
    std::mt19937 rng(32);
    check_merge(2, 0, 32, 512, 16, rng);  // Kimi-K2, TP 2 x DCP 2, a decode batch
    check_merge(2, 1, 32, 512, 3, rng);
    check_merge(4, 3, 16, 512, 5, rng);
    check_merge(8, 5, 8, 512, 1, rng);
    check_merge(2, 1, 4, 128, 40, rng);  // tiny-model shape
    // Split-KV: every rank's keys in several ranges (partials = dcp x ranges), up to the kernel's bound.
    check_merge(2, 0, 32, 512, 16, rng, 16);
    check_merge(4, 2, 16, 512, 4, rng, 32);
}

TEST_F(MlaDcp, MergeEmptyIsANoOp) {
    cuda::DcpMergeParams p;  // no tokens: nothing is read or written (null pointers are fine)
    p.dcp = 2;
    p.heads = 4;
    p.lat = 128;
    EXPECT_NO_THROW(cuda::launch_dcp_merge(p, nullptr));
}

}  // namespace
}  // namespace k2::ops_test

// Decode context parallelism: token placement (vllm.md section 5), and partial attention over KV shards merged
// by log-sum-exp equals one attention over the whole context, both in one process and across real processes
// (all-gather of the LSEs, correction, reduce-scatter over heads: vLLM's ag_rs scheme).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "core/error.h"
#include "dist/dcp.h"
#include "dist/gloo_communicator.h"
#include "multiprocess.h"

namespace k2::dist {
namespace {

constexpr int kHeads = 4;
constexpr int kHeadDim = 24;
constexpr int kVDim = 16;
constexpr int kTokens = 37;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Context {
    std::vector<float> q;  // [kHeads, kHeadDim]
    std::vector<float> k;  // [kTokens, kHeadDim]
    std::vector<float> v;  // [kTokens, kVDim]
};

Context make_context() {
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    Context c;
    c.q.resize(kHeads * kHeadDim);
    c.k.resize(kTokens * kHeadDim);
    c.v.resize(kTokens * kVDim);
    for (float& x : c.q)
        x = normal(rng);
    for (float& x : c.k)
        x = normal(rng);
    for (float& x : c.v)
        x = normal(rng);
    return c;
}

// Softmax attention written out directly in double: the single-rank reference.
std::vector<double> reference_attention(const Context& c, float scale) {
    std::vector<double> out(kHeads * kVDim, 0.0);  // [kHeads, kVDim]
    for (int h = 0; h < kHeads; ++h) {
        std::vector<double> w(kTokens);
        double max_s = -1e300;
        for (int t = 0; t < kTokens; ++t) {
            double s = 0.0;
            for (int d = 0; d < kHeadDim; ++d)
                s += double(c.q[h * kHeadDim + d]) * c.k[t * kHeadDim + d];
            w[t] = s * scale;
            max_s = std::max(max_s, w[t]);
        }
        double z = 0.0;
        for (double& x : w)
            z += (x = std::exp(x - max_s));
        for (int t = 0; t < kTokens; ++t)
            for (int d = 0; d < kVDim; ++d)
                out[h * kVDim + d] += w[t] / z * c.v[t * kVDim + d];
    }
    return out;
}

// The KV shard of one DCP rank, in local order.
void shard(const Context& c, int rank, int dcp, int interleave, std::vector<float>& k, std::vector<float>& v) {
    k.clear();
    v.clear();
    for (int t = 0; t < kTokens; ++t) {
        if (dcp_rank_of_token(t, dcp, interleave) == rank) {
            k.insert(k.end(), c.k.begin() + t * kHeadDim, c.k.begin() + (t + 1) * kHeadDim);
            v.insert(v.end(), c.v.begin() + t * kVDim, c.v.begin() + (t + 1) * kVDim);
        }
    }
}

TEST(DcpPlacement, FollowsVllmRoundRobin) {
    // dcp 4, interleave 1: token t on rank t % 4.  interleave 2: 0,0,1,1,2,2,3,3,0,0,...
    EXPECT_EQ(dcp_rank_of_token(0, 4), 0);
    EXPECT_EQ(dcp_rank_of_token(5, 4), 1);
    EXPECT_EQ(dcp_rank_of_token(7, 4, 2), 3);
    EXPECT_EQ(dcp_rank_of_token(8, 4, 2), 0);
    EXPECT_EQ(dcp_rank_of_token(13, 4, 2), 2);
    for (int interleave : {1, 2, 4}) {
        for (int dcp : {1, 2, 4, 8}) {
            for (int64_t len = 0; len < 70; ++len) {
                int64_t total = 0;
                for (int r = 0; r < dcp; ++r) {
                    int64_t direct = 0;
                    for (int64_t t = 0; t < len; ++t)
                        direct += dcp_rank_of_token(t, dcp, interleave) == r;
                    EXPECT_EQ(dcp_local_token_count(len, r, dcp, interleave), direct) << len << " " << r;
                    total += direct;
                }
                EXPECT_EQ(total, len);
            }
            // Local indices on each rank are 0, 1, 2, ... in token order.
            std::vector<int64_t> next(dcp, 0);
            for (int64_t t = 0; t < 70; ++t) {
                const int r = dcp_rank_of_token(t, dcp, interleave);
                EXPECT_EQ(dcp_local_index(t, dcp, interleave), next[r]++);
            }
        }
    }
    EXPECT_THROW(dcp_rank_of_token(1, 0), Error);
}

// The split-KV rows of a rank cover every key the token sees on this rank exactly once. The expected slots are built
// from the placement rule alone: position p (p % dcp == rank) sits in global block p / 64 at local offset
// (p % 64) / dcp of that block's 64 / dcp local entries; a row (k, t) reads table[row_seq][j / bt] * bt + j % bt for
// its keys j = 0 .. last_keys.
TEST(DcpKeyRanges, RowsCoverEachVisibleLocalKeyOnce) {
    std::mt19937 rng(5);
    for (const int dcp : {1, 2, 4, 8}) {
        const int bt = 64 / dcp;
        for (int trial = 0; trial < 20; ++trial) {
            // A batch: decode tokens (one per sequence) and prefill chunks, random contexts, shuffled block ids.
            const int num_seqs = 1 + static_cast<int>(rng() % 5);
            const int max_blocks = 1 + static_cast<int>(rng() % 9);
            std::vector<int32_t> tables(static_cast<size_t>(num_seqs * max_blocks));
            std::iota(tables.begin(), tables.end(), 0);
            std::shuffle(tables.begin(), tables.end(), rng);
            std::vector<int32_t> positions;
            std::vector<int32_t> query_start = {0};
            for (int s = 0; s < num_seqs; ++s) {
                const int len = 1 + static_cast<int>(rng() % (max_blocks * 64));
                const int queries = rng() % 2 == 0 ? 1 : 1 + static_cast<int>(rng() % len);
                for (int p = len - queries; p < len; ++p)
                    positions.push_back(p);
                query_start.push_back(static_cast<int32_t>(positions.size()));
            }
            const auto t_count = static_cast<int64_t>(positions.size());
            for (int rank = 0; rank < dcp; ++rank) {
                const int desired = 1 + static_cast<int>(rng() % 12);
                const DcpKeyRanges r =
                    plan_dcp_key_ranges(positions, query_start, tables, max_blocks, rank, dcp, desired);
                SCOPED_TRACE(::testing::Message() << "dcp " << dcp << " rank " << rank << " splits " << r.splits);
                ASSERT_GE(r.splits, 1);
                ASSERT_LE(r.splits, desired);
                ASSERT_EQ(r.row_seq.size(), static_cast<size_t>(r.splits * t_count));
                for (int s = 0; s < num_seqs; ++s) {
                    for (int32_t t = query_start[s]; t < query_start[s + 1]; ++t) {
                        std::multiset<int64_t> want;
                        for (int p = rank; p <= positions[t]; p += dcp) {
                            want.insert(int64_t{tables[s * max_blocks + p / 64]} * bt + p % 64 / dcp);
                        }
                        std::multiset<int64_t> got;
                        for (int k = 0; k < r.splits; ++k) {
                            const auto row = static_cast<size_t>(k * t_count + t);
                            ASSERT_LT(r.last_keys[row], r.max_local_keys + (r.last_keys[row] < 0 ? 1 : 0));
                            for (int j = 0; j <= r.last_keys[row]; ++j) {
                                const int32_t block =
                                    r.tables[static_cast<size_t>(r.row_seq[row]) * max_blocks + j / bt];
                                got.insert(int64_t{block} * bt + j % bt);
                            }
                        }
                        ASSERT_EQ(got, want) << "token " << t << " at position " << positions[t];
                    }
                }
            }
        }
    }
}

TEST(DcpMerge, LseRuleTreatsNanAndPosInfAsNegInf) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const float inf = std::numeric_limits<float>::infinity();
    EXPECT_FLOAT_EQ(merge_lse(std::vector<float>{1.0f, nan, inf}), 1.0f);
    EXPECT_FLOAT_EQ(merge_lse(std::vector<float>{0.0f, 0.0f}), std::log(2.0f));
    EXPECT_EQ(merge_lse(std::vector<float>{kNegInf, nan}), kNegInf);
    // log(e^1000 + e^1000) must not overflow.
    EXPECT_FLOAT_EQ(merge_lse(std::vector<float>{1000.0f, 1000.0f}), 1000.0f + std::log(2.0f));
}

TEST(DcpMerge, PartialsMergeToSingleRankAttention) {
    const Context c = make_context();
    const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
    const std::vector<double> want = reference_attention(c, scale);
    for (int interleave : {1, 4}) {
        for (int dcp : {1, 2, 4, 8, 64}) {                  // 64 > kTokens: most ranks hold nothing (lse = -inf)
            std::vector<float> outs(dcp * kHeads * kVDim);  // [dcp, kHeads, kVDim]
            std::vector<float> lses(dcp * kHeads);          // [dcp, kHeads]
            std::vector<float> k, v;
            for (int r = 0; r < dcp; ++r) {
                shard(c, r, dcp, interleave, k, v);
                partial_attention(c.q, k, v, kHeads, kHeadDim, kVDim, scale,
                                  std::span(outs).subspan(r * kHeads * kVDim, kHeads * kVDim),
                                  std::span(lses).subspan(r * kHeads, kHeads));
            }
            std::vector<float> out(kHeads * kVDim);
            std::vector<float> lse(kHeads);
            merge_partial_attention(outs, lses, dcp, kHeads, kVDim, out, lse);
            for (size_t i = 0; i < out.size(); ++i) {
                EXPECT_NEAR(out[i], want[i], 1e-5) << "dcp " << dcp << " interleave " << interleave << " i " << i;
            }
        }
    }
}

// The distributed form: each process owns one shard, all-gathers the LSEs, corrects its partial output and a
// reduce-scatter over heads hands each rank the merged output of its own heads.
TEST(DcpMerge, AcrossProcessesMatchesSingleRankAttention) {
    constexpr int kDcp = 2;
    const std::string failures = testing::run_ranks(kDcp, [](int rank, int port) {
        GlooOptions options;
        options.rank = rank;
        options.world_size = kDcp;
        options.master_port = port;
        GlooCommunicator comm(options);
        const Context c = make_context();
        const float scale = 0.3f;
        std::vector<float> k, v;
        shard(c, rank, kDcp, 1, k, v);
        std::vector<float> out(kHeads * kVDim);  // [kHeads, kVDim]
        std::vector<float> lse(kHeads);          // [kHeads]
        partial_attention(c.q, k, v, kHeads, kHeadDim, kVDim, scale, out, lse);
        std::vector<float> all_lse(kDcp * kHeads);  // [kDcp, kHeads]
        comm.all_gather(lse.data(), all_lse.data(), kHeads, DType::F32);
        correct_partial_output(out, all_lse, rank, kDcp, kHeads, kVDim);
        const size_t my_heads = kHeads / kDcp;
        std::vector<float> mine(my_heads * kVDim);  // [kHeads / kDcp, kVDim]
        comm.reduce_scatter_sum(out.data(), mine.data(), mine.size(), DType::F32);
        const std::vector<double> want = reference_attention(c, scale);
        for (size_t i = 0; i < mine.size(); ++i) {
            const double w = want[rank * my_heads * kVDim + i];
            K2_CHECK(std::fabs(mine[i] - w) < 1e-5, "rank {} element {}: {} vs {}", rank, i, mine[i], w);
        }
    });
    EXPECT_EQ(failures, "");
}

}  // namespace
}  // namespace k2::dist

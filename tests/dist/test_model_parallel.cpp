// Issue 9 acceptance 1 at the model level: the tiny Kimi-K2 split over separate processes (TP, PP, TP x DCP, EP
// over DP x TP, ...) reproduces transformers' float32 golden logits (the model-core tolerance: max |diff| <=
// 1e-3 max |golden| per row) and greedy tokens, with several sequences in one step (a prefill next to decodes).
// Each rank is a forked process with its own Gloo groups over loopback.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "dist/gloo_communicator.h"
#include "dist/parallel.h"
#include "model/golden_fixture.h"
#include "model/sequence_batch.h"
#include "multiprocess.h"

namespace k2::test {
namespace {

struct Layout {
    const char* name;
    dist::ParallelConfig config;
};

dist::ParallelConfig make_config(int tp, int pp, int dp, int dcp, bool ep) {
    dist::ParallelConfig c;
    c.tensor_parallel_size = tp;
    c.pipeline_parallel_size = pp;
    c.data_parallel_size = dp;
    c.decode_context_parallel_size = dcp;
    c.enable_expert_parallel = ep;
    return c;
}

constexpr int kGreedyTokens = 12;
constexpr int kBlocksPerSeq = 4;  // 256 tokens: the longest golden prompt plus its continuation

// One rank's view of the job: its model shard, and its replica's share of the golden prompts.
class Rank {
public:
    Rank(const dist::ParallelConfig& config, int rank, int port) {
        dist::GlooOptions base;
        base.master_port = port;
        base.timeout = std::chrono::milliseconds(60000);
        m_groups = dist::make_gloo_groups(config, rank, base);
        ModelOptions options;
        options.num_threads = 1;  // several ranks share the CI machine's 2 cores
        options.parallel = m_groups;
        m_model = load_model(fixture_path("tiny-kimi-k2"), options);
        m_model->allocate_kv_cache(2 * kBlocksPerSeq);
        const std::vector<GoldenPrompt> all = load_goldens("tiny-kimi-k2");
        const int dp = config.data_parallel_size;
        for (size_t i = 0; i < all.size(); ++i) {
            if (static_cast<int>(i) % dp == m_groups->coord.dp) {
                m_prompts.push_back(all[i]);
            }
        }
        m_steps_per_phase = static_cast<int>((all.size() + static_cast<size_t>(dp) - 1) / static_cast<size_t>(dp));
    }

    // Phase 1: every prompt as one prefill step with all logits, checked row by row on the DP leader.
    void check_prefill_logits() {
        for (int step = 0; step < m_steps_per_phase; ++step) {
            if (step >= static_cast<int>(m_prompts.size())) {
                m_model->forward(ForwardBatch{});  // a dummy step: the expert all-to-all still needs this rank
                continue;
            }
            const GoldenPrompt& g = m_prompts[static_cast<size_t>(step)];
            const std::vector<int32_t> blocks = block_range(0);
            const SequenceChunk chunk{g.ids, 0, blocks, true};
            const Tensor logits = m_model->forward(build_forward_batch({&chunk, 1}));  // [n, vocab]
            if (!m_groups->is_dp_leader())
                continue;
            const int64_t vocab = logits.dim(1);
            K2_CHECK(logits.dim(0) == static_cast<int64_t>(g.ids.size()), "rank {}: {} logit rows for {} tokens",
                     m_groups->rank, logits.dim(0), g.ids.size());
            for (size_t r = 0; r < g.logit_positions.size(); ++r) {
                const auto ok = row_matches(logits.data_as<float>() + g.logit_positions[r] * vocab,
                                            g.logits.data() + r * vocab, vocab);
                K2_CHECK(ok, "rank {}: prompt of {} tokens, position {}: {}", m_groups->rank, g.ids.size(),
                         g.logit_positions[r], ok.message());
            }
        }
    }

    // Phase 2: two prompts generated side by side (first step: both prefills in one batch; then batched
    // decodes), greedy tokens compared with the goldens'.
    void check_greedy_batched() {
        const size_t n = std::min<size_t>(2, m_prompts.size());
        std::vector<std::vector<int32_t>> seqs(n);
        std::vector<std::vector<int32_t>> generated(n);
        for (size_t s = 0; s < n; ++s) {
            seqs[s] = m_prompts[s].ids;
        }
        for (int step = 0; step < kGreedyTokens; ++step) {
            std::vector<std::vector<int32_t>> blocks(n);
            std::vector<SequenceChunk> chunks;
            for (size_t s = 0; s < n; ++s) {
                blocks[s] = block_range(static_cast<int>(s));
                const int32_t cached = step == 0 ? 0 : static_cast<int32_t>(seqs[s].size()) - 1;
                chunks.push_back({std::span(seqs[s]).subspan(static_cast<size_t>(cached)), cached, blocks[s], false});
            }
            const Tensor logits = m_model->forward(build_forward_batch(chunks));  // [n, vocab] on the DP leader
            const std::vector<int32_t> next = share_argmax(logits, n);
            for (size_t s = 0; s < n; ++s) {
                seqs[s].push_back(next[s]);
                generated[s].push_back(next[s]);
            }
        }
        for (size_t s = 0; s < n; ++s) {
            K2_CHECK(generated[s] == m_prompts[s].greedy_12, "rank {}: greedy tokens of prompt {} ({} tokens) differ",
                     m_groups->rank, s, m_prompts[s].ids.size());
        }
    }

private:
    std::vector<int32_t> block_range(int seq) const {
        std::vector<int32_t> blocks(kBlocksPerSeq);
        for (int i = 0; i < kBlocksPerSeq; ++i) {
            blocks[static_cast<size_t>(i)] = seq * kBlocksPerSeq + i;
        }
        return blocks;
    }

    // The DP leader's argmax tokens, handed to every rank of the job (a world all-reduce of one row per replica;
    // token ids are exact in fp32).
    std::vector<int32_t> share_argmax(const Tensor& logits, size_t n) {
        const int dp = m_groups->config.data_parallel_size;
        std::vector<float> rows(static_cast<size_t>(dp) * 2, 0.0f);  // [dp, 2]
        if (m_groups->is_dp_leader()) {
            K2_CHECK(logits.dim(0) == static_cast<int64_t>(n), "rank {}: {} logit rows, expected {}", m_groups->rank,
                     logits.dim(0), n);
            for (size_t s = 0; s < n; ++s) {
                const float* row = logits.data_as<float>() + static_cast<int64_t>(s) * logits.dim(1);
                K2_CHECK(std::all_of(row, row + logits.dim(1), [](float v) { return std::isfinite(v); }),
                         "rank {}: non-finite logits", m_groups->rank);
                rows[static_cast<size_t>(m_groups->coord.dp) * 2 + s] =
                    static_cast<float>(std::max_element(row, row + logits.dim(1)) - row);
            }
        }
        m_groups->world->all_reduce_sum(rows);
        std::vector<int32_t> next(n);
        for (size_t s = 0; s < n; ++s) {
            next[s] = static_cast<int32_t>(rows[static_cast<size_t>(m_groups->coord.dp) * 2 + s]);
        }
        return next;
    }

    std::shared_ptr<dist::ParallelGroups> m_groups;
    std::unique_ptr<Model> m_model;
    std::vector<GoldenPrompt> m_prompts;
    int m_steps_per_phase = 0;
};

class ModelParallel : public ::testing::TestWithParam<Layout> {};

TEST_P(ModelParallel, MatchesSingleRankGoldens) {
    const dist::ParallelConfig config = GetParam().config;
    const std::string failures = dist::testing::run_ranks(
        config.world_size(),
        [&](int rank, int port) {
            Rank r(config, rank, port);
            r.check_prefill_logits();
            r.check_greedy_batched();
        },
        std::chrono::seconds(240));
    EXPECT_EQ(failures, "") << GetParam().name;
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, ModelParallel,
    ::testing::Values(Layout{"tp2", make_config(2, 1, 1, 1, false)}, Layout{"tp4", make_config(4, 1, 1, 1, false)},
                      Layout{"pp2", make_config(1, 2, 1, 1, false)}, Layout{"tp2_pp2", make_config(2, 2, 1, 1, false)},
                      Layout{"tp2_dcp2", make_config(2, 1, 1, 2, false)},
                      Layout{"tp4_dcp4", make_config(4, 1, 1, 4, false)},
                      Layout{"tp2_ep", make_config(2, 1, 1, 1, true)},
                      Layout{"dp2_tp2_ep", make_config(2, 1, 2, 1, true)},
                      Layout{"dp2_ep", make_config(1, 1, 2, 1, true)}),
    [](const ::testing::TestParamInfo<Layout>& param_info) { return std::string(param_info.param.name); });

// A layout the model cannot be split into is refused with the field and the flag named.
TEST(ModelParallelLayout, IndivisibleHeadsAreRejected) {
    const std::string failures = dist::testing::run_ranks(3, [&](int rank, int port) {
        dist::GlooOptions base;
        base.master_port = port;
        ModelOptions options;
        options.parallel = dist::make_gloo_groups(make_config(3, 1, 1, 1, false), rank, base);
        try {
            load_model(fixture_path("tiny-kimi-k2"), options);
        } catch (const Error& e) {
            const std::string what = e.what();
            K2_CHECK(what.find("num_attention_heads") != std::string::npos &&
                         what.find("--tensor-parallel-size") != std::string::npos,
                     "unexpected message: {}", what);
            return;
        }
        K2_FAIL("tp=3 over 4 heads was accepted");
    });
    EXPECT_EQ(failures, "");
}

}  // namespace
}  // namespace k2::test

namespace k2::test {
namespace {

// A dummy step (what an idle DP replica runs) computes nothing and returns no rows.
TEST(ModelParallelLayout, EmptyBatchIsANoOp) {
    ModelOptions options;
    options.num_threads = 1;
    std::unique_ptr<Model> model = load_model(fixture_path("tiny-kimi-k2"), options);
    model->allocate_kv_cache(1);
    const Tensor logits = model->forward(ForwardBatch{});
    EXPECT_EQ(logits.dim(0), 0);
    EXPECT_EQ(logits.dim(1), model->config().vocab_size);
}

}  // namespace
}  // namespace k2::test

// Scheduler unit tests with fake requests and no model: token budget, max_num_seqs, chunked prefill,
// preemption by recompute, FCFS / priority order, no starvation. Each runs in milliseconds.
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "engine/scheduler.h"

namespace k2 {
namespace {

struct Sim {
    Sim(SchedulerConfig config, int num_blocks) : kv(num_blocks, 64, true), scheduler(config, kv) {}

    Request* add(int num_prompt, int max_tokens, int priority = 0) {
        auto request = std::make_unique<Request>();
        request->seq_id = next_id++;
        request->request_id = std::to_string(request->seq_id);
        request->arrival_order = request->seq_id;
        request->priority = priority;
        for (int i = 0; i < num_prompt; ++i) request->token_ids.push_back(static_cast<int32_t>(request->seq_id * 1000 + i));
        request->num_prompt_tokens = num_prompt;
        request->max_tokens = max_tokens;
        Request* raw = request.get();
        scheduler.add(std::move(request));
        return raw;
    }

    // One step: schedule, check the limits, "compute", append a token to sequences that reached the end.
    SchedulerOutput step() {
        SchedulerOutput output = scheduler.schedule();
        int num_tokens = 0;
        for (const ScheduledSeq& seq : output.seqs) {
            EXPECT_GT(seq.num_new_tokens, 0);
            num_tokens += seq.num_new_tokens;
            EXPECT_GE(static_cast<int>(kv.block_table(seq.request->seq_id).size()) * 64,
                      seq.request->num_computed_tokens + seq.num_new_tokens);
        }
        EXPECT_EQ(num_tokens, output.num_batched_tokens);
        EXPECT_LE(num_tokens, scheduler.config().max_num_batched_tokens);
        EXPECT_LE(static_cast<int>(output.seqs.size()), scheduler.config().max_num_seqs);
        EXPECT_LE(scheduler.num_running(), scheduler.config().max_num_seqs);
        scheduler.on_step_done(output);
        ++num_steps;
        for (const ScheduledSeq& seq : output.seqs) {
            Request* request = seq.request;
            if (request->num_computed_tokens < request->num_tokens()) continue;
            request->token_ids.push_back(7);
            if (request->num_output_tokens() >= request->max_tokens) {
                finished_at[request->seq_id] = num_steps;
                scheduler.finish(request, FinishReason::Length);
            }
        }
        return output;
    }

    KvCacheManager kv;
    Scheduler scheduler;
    uint64_t next_id = 1;
    int num_steps = 0;
    std::map<uint64_t, int> finished_at;
};

TEST(Scheduler, BudgetAndMaxNumSeqsAreNeverExceeded) {
    Sim sim({.max_num_seqs = 4, .max_num_batched_tokens = 32}, 64);
    std::mt19937 rng(1);
    for (int i = 0; i < 40; ++i) sim.add(1 + static_cast<int>(rng() % 150), 1 + static_cast<int>(rng() % 20));
    while (sim.scheduler.has_unfinished()) {
        sim.step();
        ASSERT_LT(sim.num_steps, 10000);
    }
    EXPECT_EQ(sim.finished_at.size(), 40u);
    EXPECT_EQ(sim.kv.num_free_blocks(), 64);
    EXPECT_EQ(sim.kv.num_seqs(), 0);
}

TEST(Scheduler, ChunkedPrefillAndDecodesFirst) {
    Sim sim({.max_num_seqs = 8, .max_num_batched_tokens = 16}, 16);
    Request* decode = sim.add(4, 100);
    sim.step();  // prefill of the short prompt, first token
    EXPECT_EQ(decode->num_output_tokens(), 1);
    Request* long_prompt = sim.add(200, 1);
    const SchedulerOutput output = sim.step();
    ASSERT_EQ(output.seqs.size(), 2u);
    EXPECT_EQ(output.seqs[0].request, decode);  // the decode first
    EXPECT_EQ(output.seqs[0].num_new_tokens, 1);
    EXPECT_EQ(output.seqs[1].request, long_prompt);
    EXPECT_EQ(output.seqs[1].num_new_tokens, 15);  // the rest of the budget
    int steps = 1;
    // NOTE: scheduler.finish() frees the request, so the loop watches finished_at, not long_prompt (ASan).
    const uint64_t long_id = long_prompt->seq_id;
    while (!sim.finished_at.contains(long_id)) {
        sim.step();
        ++steps;
    }
    EXPECT_EQ(steps, 14);  // 200 tokens at 15 per step
}

TEST(Scheduler, FcfsAdmissionOrderAndNoStarvation) {
    Sim sim({.max_num_seqs = 2, .max_num_batched_tokens = 64}, 64);
    std::vector<Request*> requests;
    for (int i = 0; i < 10; ++i) requests.push_back(sim.add(10, 5));
    while (sim.scheduler.has_unfinished()) sim.step();
    for (size_t i = 1; i < requests.size(); ++i) {
        EXPECT_LE(sim.finished_at[i], sim.finished_at[i + 1]) << "request " << i + 1 << " overtook an earlier one";
    }
}

TEST(Scheduler, PreemptsTheLatestRequestByRecompute) {
    // 4 blocks of 64 tokens: two sequences of 100 prompt tokens fill them; growth forces a preemption.
    Sim sim({.max_num_seqs = 8, .max_num_batched_tokens = 512}, 4);
    Request* first = sim.add(100, 60);
    Request* second = sim.add(100, 60);
    sim.step();
    EXPECT_EQ(first->status, RequestStatus::Running);
    EXPECT_EQ(second->status, RequestStatus::Running);
    bool preempted = false;
    while (!preempted) {
        const SchedulerOutput output = sim.step();
        if (!output.preempted.empty()) {
            ASSERT_EQ(output.preempted.size(), 1u);
            EXPECT_EQ(output.preempted[0], second);
            preempted = true;
        }
    }
    EXPECT_EQ(second->status, RequestStatus::Preempted);
    EXPECT_EQ(second->num_computed_tokens, 0);
    EXPECT_EQ(second->num_preemptions, 1);
    EXPECT_EQ(sim.scheduler.waiting().front(), second);
    // Checked here: `first` is freed once it finishes below (ASan found the read after the loop).
    EXPECT_EQ(first->num_preemptions, 0);
    while (sim.scheduler.has_unfinished()) {
        sim.step();
        ASSERT_LT(sim.num_steps, 1000);
    }
    EXPECT_LT(sim.finished_at[1], sim.finished_at[2]);
    EXPECT_EQ(sim.kv.num_free_blocks(), 4);
}

TEST(Scheduler, PriorityPolicyAdmitsLowerValuesFirst) {
    Sim sim({.max_num_seqs = 1, .max_num_batched_tokens = 64, .policy = SchedulingPolicy::Priority}, 16);
    sim.add(8, 2, 5);
    sim.add(8, 2, 1);
    sim.add(8, 2, 3);
    while (sim.scheduler.has_unfinished()) sim.step();
    EXPECT_LT(sim.finished_at[2], sim.finished_at[3]);
    EXPECT_LT(sim.finished_at[3], sim.finished_at[1]);
}

TEST(Scheduler, PrefixHitsSkipComputedBlocks) {
    Sim sim({.max_num_seqs = 4, .max_num_batched_tokens = 1024}, 16);
    Request* first = sim.add(150, 1);
    const std::vector<int32_t> prompt = first->token_ids;
    while (sim.scheduler.has_unfinished()) sim.step();
    auto request = std::make_unique<Request>();
    request->seq_id = 99;
    request->request_id = "99";
    request->token_ids = prompt;
    request->token_ids.push_back(3);
    request->num_prompt_tokens = 151;
    request->max_tokens = 1;
    Request* second = request.get();
    sim.scheduler.add(std::move(request));
    const SchedulerOutput output = sim.scheduler.schedule();
    ASSERT_EQ(output.seqs.size(), 1u);
    EXPECT_EQ(second->num_computed_tokens, 128);
    EXPECT_EQ(second->num_cached_tokens, 128);
    EXPECT_EQ(output.seqs[0].num_new_tokens, 151 - 128);
    EXPECT_EQ(output.prefix_cache_queries, 151u);
    EXPECT_EQ(output.prefix_cache_hits, 128u);
}

TEST(Scheduler, FinishRemovesWaitingRequests) {
    Sim sim({.max_num_seqs = 1, .max_num_batched_tokens = 64}, 8);
    sim.add(10, 3);
    Request* waiting = sim.add(10, 3);
    sim.step();
    EXPECT_EQ(sim.scheduler.num_waiting(), 1);
    EXPECT_EQ(sim.scheduler.find("2").size(), 1u);
    sim.scheduler.finish(waiting, FinishReason::Abort);
    EXPECT_EQ(sim.scheduler.num_waiting(), 0);
    EXPECT_TRUE(sim.scheduler.find("2").empty());
}

}  // namespace
}  // namespace k2

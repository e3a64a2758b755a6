// Scheduler: vLLM v1's phase-free scheduler (reference/vllm.md §6.1). Each request's num_computed_tokens
// chases its num_tokens; a step hands out a token budget to running requests first (decodes and
// unfinished chunked prefills), then admits waiting ones FCFS (or by priority) with prefix-cache hits.
// When blocks run out the latest running request is preempted by recompute. Plain C++ (no device
// code), owned by the step thread.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/request.h"
#include "kv/kv_cache_manager.h"

namespace k2 {

enum class SchedulingPolicy : uint8_t { Fcfs, Priority };

SchedulingPolicy parse_scheduling_policy(const std::string& name);  // "fcfs" | "priority"

struct SchedulerConfig {
    int max_num_seqs = 256;
    int max_num_batched_tokens = 8192;
    int max_model_len = 0;
    SchedulingPolicy policy = SchedulingPolicy::Fcfs;
};

struct ScheduledSeq {
    Request* request = nullptr;
    int num_new_tokens = 0;       // tokens [num_computed_tokens, num_computed_tokens + num_new_tokens) run now
    int num_computed_tokens = 0;  // the request's num_computed_tokens when it was scheduled
};

struct SchedulerOutput {
    std::vector<ScheduledSeq> seqs;  // running requests first, then newly admitted ones
    std::vector<Request*> preempted;
    int num_batched_tokens = 0;
    uint64_t prefix_cache_queries = 0;  // tokens looked up by admitted requests
    uint64_t prefix_cache_hits = 0;     // of which found in the cache

    bool empty() const { return seqs.empty(); }
};

class Scheduler {
public:
    Scheduler(SchedulerConfig config, KvCacheManager& kv);

    void add(std::unique_ptr<Request> request);
    SchedulerOutput schedule();
    // After the forward pass: the scheduled tokens are computed; their full blocks join the prefix cache.
    void on_step_done(const SchedulerOutput& output);
    // --async-scheduling splits on_step_done: on_step_scheduled (right after schedule(), before the step runs)
    // counts the scheduled tokens as computed and adds an output placeholder for every sequence that samples, so
    // the next schedule() can give it a decode row; on_step_collected (after the step ran) registers the full
    // blocks of sequences still running in the prefix cache.
    void on_step_scheduled(const SchedulerOutput& output);
    void on_step_collected(const SchedulerOutput& output);
    // Removes a running or waiting request, freeing its blocks unless free_blocks is false (the caller frees
    // them with KvCacheManager::free once no step that writes them is in flight); returns ownership.
    std::unique_ptr<Request> finish(Request* request, FinishReason reason, bool free_blocks = true);
    // Every unfinished sequence of a client request id (n > 1 gives several).
    std::vector<Request*> find(const std::string& request_id) const;

    int num_running() const { return static_cast<int>(m_running.size()); }
    int num_waiting() const { return static_cast<int>(m_waiting.size()); }
    bool has_unfinished() const { return !m_requests.empty(); }
    const std::vector<Request*>& running() const { return m_running; }
    const std::deque<Request*>& waiting() const { return m_waiting; }
    const SchedulerConfig& config() const { return m_config; }

private:
    bool schedule_running(SchedulerOutput& output, int& budget, size_t& idx);
    void schedule_waiting(SchedulerOutput& output, int& budget);
    Request* pick_victim() const;
    void preempt(Request* request, SchedulerOutput& output, int& budget);
    void push_waiting(Request* request, bool front);
    void erase_from_queues(Request* request);

    SchedulerConfig m_config;
    KvCacheManager& m_kv;
    std::unordered_map<uint64_t, std::unique_ptr<Request>> m_requests;  // by seq_id
    std::unordered_multimap<std::string, Request*> m_by_request_id;
    std::vector<Request*> m_running;
    std::deque<Request*> m_waiting;
};

}  // namespace k2

#include "engine/scheduler.h"

#include <algorithm>

#include "core/error.h"

namespace k2 {

SchedulingPolicy parse_scheduling_policy(const std::string& name) {
    if (name == "fcfs") return SchedulingPolicy::Fcfs;
    if (name == "priority") return SchedulingPolicy::Priority;
    K2_FAIL("scheduling_policy must be \"fcfs\" or \"priority\", got \"{}\"", name);
}

Scheduler::Scheduler(SchedulerConfig config, KvCacheManager& kv) : m_config(config), m_kv(kv) {
    K2_CHECK(config.max_num_seqs > 0, "max_num_seqs must be positive, got {}", config.max_num_seqs);
    K2_CHECK(config.max_num_batched_tokens > 0, "max_num_batched_tokens must be positive, got {}",
             config.max_num_batched_tokens);
}

void Scheduler::add(std::unique_ptr<Request> request) {
    Request* raw = request.get();
    K2_CHECK(m_requests.emplace(raw->seq_id, std::move(request)).second, "duplicate sequence id {}", raw->seq_id);
    m_by_request_id.emplace(raw->request_id, raw);
    raw->status = RequestStatus::Waiting;
    push_waiting(raw, false);
}

SchedulerOutput Scheduler::schedule() {
    SchedulerOutput output;
    int budget = m_config.max_num_batched_tokens;
    size_t idx = 0;
    while (idx < m_running.size() && budget > 0) {
        schedule_running(output, budget, idx);
    }
    // NOTE: as in vLLM, nothing new is admitted in a step that had to preempt.
    if (output.preempted.empty()) schedule_waiting(output, budget);
    output.num_batched_tokens = m_config.max_num_batched_tokens - budget;
    return output;
}

bool Scheduler::schedule_running(SchedulerOutput& output, int& budget, size_t& idx) {
    Request* request = m_running[idx];
    // --async-scheduling: a sequence whose in-flight token is sure to end it on length gets no row it would drop.
    const bool ends_in_flight = request->num_output_placeholders > 0 &&
                                request->num_output_tokens() + request->num_output_placeholders >= request->max_tokens;
    const int num_new_tokens =
        ends_in_flight ? 0 : std::min(request->num_tokens_with_placeholders() - request->num_computed_tokens, budget);
    if (num_new_tokens <= 0) {
        ++idx;
        return false;
    }
    while (!m_kv.allocate(request->seq_id, request->num_computed_tokens + num_new_tokens, nullptr)) {
        Request* victim = pick_victim();
        const auto victim_idx = static_cast<size_t>(std::find(m_running.begin(), m_running.end(), victim) -
                                                    m_running.begin());
        preempt(victim, output, budget);
        if (victim == request) return false;  // idx now names the next running request
        if (victim_idx < idx) --idx;
    }
    output.seqs.push_back({request, num_new_tokens, request->num_computed_tokens});
    budget -= num_new_tokens;
    ++idx;
    return true;
}

void Scheduler::schedule_waiting(SchedulerOutput& output, int& budget) {
    while (!m_waiting.empty() && budget > 0 && static_cast<int>(m_running.size()) < m_config.max_num_seqs) {
        Request* request = m_waiting.front();
        // NOTE: prompt logprobs need logits for every prompt row, so such prompts skip the cache (as vLLM).
        PrefixHit hit;
        if (request->prompt_logprobs_done()) hit = m_kv.find_prefix(request->token_ids);
        const int num_new_tokens = std::min(request->num_tokens_with_placeholders() - hit.num_tokens, budget);
        if (!m_kv.allocate(request->seq_id, hit.num_tokens + num_new_tokens, &hit)) break;
        m_waiting.pop_front();
        request->num_computed_tokens = hit.num_tokens;
        if (request->num_cached_tokens < 0) {
            request->num_cached_tokens = hit.num_tokens;
            request->scheduled_time = Clock::now();
        }
        if (m_kv.prefix_caching()) {
            output.prefix_cache_queries += static_cast<uint64_t>(request->num_tokens());
            output.prefix_cache_hits += static_cast<uint64_t>(hit.num_tokens);
        }
        request->status = RequestStatus::Running;
        m_running.push_back(request);
        output.seqs.push_back({request, num_new_tokens, request->num_computed_tokens});
        budget -= num_new_tokens;
    }
}

Request* Scheduler::pick_victim() const {
    if (m_config.policy == SchedulingPolicy::Fcfs) return m_running.back();
    // Priority: the least important (highest value), latest-arriving request.
    return *std::max_element(m_running.begin(), m_running.end(), [](const Request* a, const Request* b) {
        return std::pair(a->priority, a->arrival_order) < std::pair(b->priority, b->arrival_order);
    });
}

void Scheduler::preempt(Request* request, SchedulerOutput& output, int& budget) {
    // A victim scheduled earlier in this step gives its tokens back.
    const auto it = std::find_if(output.seqs.begin(), output.seqs.end(),
                                 [&](const ScheduledSeq& seq) { return seq.request == request; });
    if (it != output.seqs.end()) {
        budget += it->num_new_tokens;
        output.seqs.erase(it);
    }
    m_running.erase(std::find(m_running.begin(), m_running.end(), request));
    m_kv.free(request->seq_id);
    request->num_computed_tokens = 0;
    request->num_preemptions += 1;
    request->status = RequestStatus::Preempted;
    push_waiting(request, true);
    output.preempted.push_back(request);
}

void Scheduler::on_step_done(const SchedulerOutput& output) {
    for (const ScheduledSeq& seq : output.seqs) {
        Request& request = *seq.request;
        request.num_computed_tokens += seq.num_new_tokens;
        m_kv.cache_blocks(request.seq_id, request.token_ids, request.num_computed_tokens);
    }
}

void Scheduler::on_step_scheduled(const SchedulerOutput& output) {
    for (const ScheduledSeq& seq : output.seqs) {
        Request& request = *seq.request;
        request.num_computed_tokens += seq.num_new_tokens;
        if (request.num_computed_tokens == request.num_tokens_with_placeholders()) request.num_output_placeholders += 1;
    }
}

void Scheduler::on_step_collected(const SchedulerOutput& output) {
    for (const ScheduledSeq& seq : output.seqs) {
        Request& request = *seq.request;
        // Finished and preempted sequences are skipped: their blocks are (about to be) freed.
        if (request.status != RequestStatus::Running) continue;
        const int end = std::min(seq.num_computed_tokens + seq.num_new_tokens, request.num_tokens());
        m_kv.cache_blocks(request.seq_id, request.token_ids, end);
    }
}

std::unique_ptr<Request> Scheduler::finish(Request* request, FinishReason reason, bool free_blocks) {
    erase_from_queues(request);
    if (free_blocks) m_kv.free(request->seq_id);
    request->status = RequestStatus::Finished;
    request->finish_reason = reason;
    const auto range = m_by_request_id.equal_range(request->request_id);
    for (auto it = range.first; it != range.second; ++it) {
        if (it->second == request) {
            m_by_request_id.erase(it);
            break;
        }
    }
    auto node = m_requests.extract(request->seq_id);
    K2_CHECK(!node.empty(), "finishing unknown sequence {}", request->seq_id);
    return std::move(node.mapped());
}

std::vector<Request*> Scheduler::find(const std::string& request_id) const {
    std::vector<Request*> found;
    const auto range = m_by_request_id.equal_range(request_id);
    for (auto it = range.first; it != range.second; ++it) found.push_back(it->second);
    return found;
}

void Scheduler::push_waiting(Request* request, bool front) {
    if (m_config.policy == SchedulingPolicy::Priority) {
        // Ordered by (priority, arrival); a preempted request keeps its place by those keys.
        const auto key = std::pair(request->priority, request->arrival_order);
        const auto pos = std::find_if(m_waiting.begin(), m_waiting.end(), [&](const Request* other) {
            return key < std::pair(other->priority, other->arrival_order);
        });
        m_waiting.insert(pos, request);
    } else if (front) {
        m_waiting.push_front(request);
    } else {
        m_waiting.push_back(request);
    }
}

void Scheduler::erase_from_queues(Request* request) {
    if (const auto it = std::find(m_running.begin(), m_running.end(), request); it != m_running.end()) {
        m_running.erase(it);
    }
    if (const auto it = std::find(m_waiting.begin(), m_waiting.end(), request); it != m_waiting.end()) {
        m_waiting.erase(it);
    }
}

}  // namespace k2

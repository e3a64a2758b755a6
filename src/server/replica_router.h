// ReplicaRouter: the DP engines (one per data-parallel replica) behind one API server, and vLLM's internal load
// balancing over them (reference/vllm.md §1.3): a request goes to the engine with the smallest
// 4 * waiting + running. As in vLLM's client, the waiting count is bumped optimistically for every request routed
// to an engine until that engine's next step refreshes its gauges; ties rotate.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace k2 {
class Engine;
}  // namespace k2

namespace k2::server {

class ReplicaRouter {
public:
    explicit ReplicaRouter(std::vector<std::shared_ptr<Engine>> engines);

    std::shared_ptr<Engine> pick();  // thread-safe
    const std::vector<std::shared_ptr<Engine>>& engines() const { return m_engines; }

private:
    std::vector<std::shared_ptr<Engine>> m_engines;
    std::mutex m_mutex;
    std::vector<uint64_t> m_seen_steps;  // [engines] num_steps when the bump was last reset
    std::vector<int> m_bumps;            // [engines] requests routed there since
    size_t m_next = 0;                   // where ties start
};

}  // namespace k2::server

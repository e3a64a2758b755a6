#include "server/replica_router.h"

#include <limits>

#include "core/error.h"
#include "engine/engine.h"

namespace k2::server {

ReplicaRouter::ReplicaRouter(std::vector<std::shared_ptr<Engine>> engines)
    : m_engines(std::move(engines)), m_seen_steps(m_engines.size(), 0), m_bumps(m_engines.size(), 0) {
    K2_CHECK(!m_engines.empty(), "ReplicaRouter needs at least one engine");
}

std::shared_ptr<Engine> ReplicaRouter::pick() {
    if (m_engines.size() == 1) {
        return m_engines.front();
    }
    const std::lock_guard lock(m_mutex);
    size_t best = 0;
    int64_t best_score = std::numeric_limits<int64_t>::max();
    for (size_t k = 0; k < m_engines.size(); ++k) {
        const size_t i = (m_next + k) % m_engines.size();
        const EngineStats stats = m_engines[i]->stats();
        if (stats.num_steps != m_seen_steps[i]) {  // the gauges are newer than our bumps
            m_seen_steps[i] = stats.num_steps;
            m_bumps[i] = 0;
        }
        const int64_t score = 4 * static_cast<int64_t>(stats.num_waiting + m_bumps[i]) + stats.num_running;
        if (score < best_score) {
            best_score = score;
            best = i;
        }
    }
    ++m_bumps[best];
    m_next = (m_next + 1) % m_engines.size();
    return m_engines[best];
}

}  // namespace k2::server

// Prometheus text exposition (format 0.0.4) of Engine::stats() with vLLM's metric names and labels
// (reference/vllm.md §2.10): labels model_name and engine; counters end in _total.
#pragma once

#include <string>
#include <vector>

namespace k2 {
struct EngineStats;
struct EngineConfig;
}  // namespace k2

namespace k2::server {

std::string render_prometheus(const EngineStats& stats, const std::string& model_name, const EngineConfig& config,
                              int engine_index = 0);
// DP replicas (vLLM's per-engine label): each family once, with one sample set per engine (engine="0", "1", ...).
std::string render_prometheus(const std::vector<EngineStats>& stats, const std::string& model_name,
                              const EngineConfig& config);
// Server-side gauges (requests in flight in the HTTP layer).
std::string render_server_metrics(int num_active_requests, const std::string& model_name);

}  // namespace k2::server

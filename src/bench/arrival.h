// Request arrival schedule of `k2 bench serve` (reference/vllm.md §4.3, newer vLLM's get_request).
#pragma once

#include <cstdint>
#include <vector>

namespace k2::bench {

// Send time of each request in seconds from the benchmark start. Rate inf: all 0. Otherwise gaps are drawn
// from Gamma(shape = burstiness, scale = 1 / (rate * burstiness)) (burstiness inf: constant 1/rate), summed,
// and rescaled so the last request goes out at exactly num_requests / rate.
// NOTE: the draws use std::mt19937_64, so a seed gives a reproducible schedule but not NumPy's numbers.
std::vector<double> arrival_times(int num_requests, double request_rate, double burstiness, uint64_t seed);

}  // namespace k2::bench

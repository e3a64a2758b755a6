// Request arrival schedule of `k2 bench serve` (reference/vllm.md §4.3, newer vLLM's get_request).
#pragma once

#include <cstdint>
#include <vector>

namespace k2::bench {

// Send time of each request in seconds from the benchmark start. Rate inf: all 0. Otherwise gaps are drawn
// from Gamma(shape = burstiness, scale = 1 / (rate * burstiness)) (burstiness inf: constant 1/rate), summed,
// and rescaled so the last request goes out at exactly num_requests / rate.
// Gaps are np.random.gamma draws after np.random.seed(seed) (numpy_random.h), so a seed gives vLLM's schedule
// (up to the last bits of libm's pow/log). Throws for a seed above 2**32 - 1, as NumPy does.
std::vector<double> arrival_times(int num_requests, double request_rate, double burstiness, uint64_t seed);

}  // namespace k2::bench

#include "bench/arrival.h"

#include <cmath>
#include <cstdint>

#include "bench/numpy_random.h"
#include "core/error.h"

namespace k2::bench {

std::vector<double> arrival_times(int num_requests, double request_rate, double burstiness, uint64_t seed) {
    K2_CHECK(num_requests > 0, "--num-prompts must be positive, got {}", num_requests);
    K2_CHECK(request_rate > 0.0, "--request-rate must be positive, got {}", request_rate);
    K2_CHECK(burstiness > 0.0, "--burstiness must be positive, got {}", burstiness);
    // vllm bench serve calls np.random.seed(--seed), which refuses anything outside 32 bits.
    K2_CHECK(seed <= UINT32_MAX, "--seed must be between 0 and 2**32 - 1 (NumPy's legacy seeding), got {}", seed);
    std::vector<double> times(static_cast<size_t>(num_requests), 0.0);
    if (std::isinf(request_rate)) {
        return times;
    }
    // np.random.gamma on the global RandomState, one draw per request in order (vLLM's get_request).
    NumpyRandomState rng(static_cast<uint32_t>(seed));
    const double scale = 1.0 / (request_rate * burstiness);
    double total = 0.0;
    for (double& time : times) {
        total += std::isinf(burstiness) ? 1.0 / request_rate : rng.gamma(burstiness, scale);
        time = total;
    }
    // Rescale so the schedule spans exactly N / rate: raw gamma sums miss it by a few percent, which would make
    // throughput depend on the seed.
    if (total > 0.0) {
        const double factor = (num_requests / request_rate) / total;
        for (double& time : times) {
            time *= factor;
        }
    }
    return times;
}

}  // namespace k2::bench

#include "bench/arrival.h"

#include <cmath>
#include <random>

#include "core/error.h"

namespace k2::bench {

std::vector<double> arrival_times(int num_requests, double request_rate, double burstiness, uint64_t seed) {
    K2_CHECK(num_requests > 0, "--num-prompts must be positive, got {}", num_requests);
    K2_CHECK(request_rate > 0.0, "--request-rate must be positive, got {}", request_rate);
    K2_CHECK(burstiness > 0.0, "--burstiness must be positive, got {}", burstiness);
    std::vector<double> times(static_cast<size_t>(num_requests), 0.0);
    if (std::isinf(request_rate)) {
        return times;
    }
    std::mt19937_64 rng(seed);
    // Built only for a finite burstiness: its scale would be 0 otherwise.
    const double shape = std::isinf(burstiness) ? 1.0 : burstiness;
    std::gamma_distribution<double> gamma(shape, 1.0 / (request_rate * shape));
    double total = 0.0;
    for (double& time : times) {
        total += std::isinf(burstiness) ? 1.0 / request_rate : gamma(rng);
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

// bench_sampler: host time of the engine's sampler on Kimi-K2-sized rows (163,840 logits), the CPU work every decode
// step pays per sequence (docs/perf/cpu.md "Sampler"). Rows of N(0, 3) logits; per case the median over --reps
// passes of --rows rows, one row at a time on one thread (the engine samples rows in parallel, one per thread).
// The baseline, timed in the same run, is the previous plain-temperature draw (libm expf per element, a scalar max
// and walk), kept here only as the reference point.
//   bench_sampler [--vocab 163840] [--rows 16] [--reps 20]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/sampler.h"

namespace {

using Clock = std::chrono::steady_clock;

// The draw before session 5 (sampler.cpp history): one libm exp per element, then the walk from the start.
int32_t baseline_draw(const std::vector<float>& logits, double temperature, std::mt19937_64& rng) {
    constexpr float kMasked = -std::numeric_limits<float>::infinity();
    const float max_logit = *std::max_element(logits.begin(), logits.end());
    const auto inv_t = static_cast<float>(1.0 / temperature);
    thread_local std::vector<float> weights;  // [vocab]
    weights.resize(logits.size());
    double sum = 0.0;
    for (size_t i = 0; i < logits.size(); ++i) {
        weights[i] = logits[i] == kMasked ? 0.0f : std::exp((logits[i] - max_logit) * inv_t);
        sum += weights[i];
    }
    const double target = std::uniform_real_distribution<double>(0.0, 1.0)(rng) * sum;
    double cumulative = 0.0;
    int32_t last = 0;
    for (size_t i = 0; i < weights.size(); ++i) {
        if (weights[i] <= 0.0f)
            continue;
        cumulative += weights[i];
        last = static_cast<int32_t>(i);
        if (target < cumulative)
            return last;
    }
    return last;
}

template <typename Fn>
double median_us_per_row(int reps, int rows, Fn&& fn) {
    std::vector<double> times;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = Clock::now();
        for (int i = 0; i < rows; ++i)
            fn(i);
        times.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / rows);
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    int vocab = 163840, rows = 16, reps = 20;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string flag = argv[i];
        const int value = std::atoi(argv[i + 1]);
        if (flag == "--vocab")
            vocab = value;
        else if (flag == "--rows")
            rows = value;
        else if (flag == "--reps")
            reps = value;
        else {
            std::fprintf(stderr, "bench_sampler: unknown flag %s\n", flag.c_str());
            return 2;
        }
    }
    std::mt19937 gen(7);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    std::vector<std::vector<float>> logits(static_cast<size_t>(rows), std::vector<float>(static_cast<size_t>(vocab)));
    for (auto& row : logits) {
        for (float& x : row)
            x = normal(gen);
    }
    std::mt19937_64 rng(1);
    int64_t checksum = 0;  // keeps the draws alive
    auto run = [&](const k2::SamplingParams& params) {
        k2::SampleContext context;
        context.params = &params;
        context.rng = &rng;
        return median_us_per_row(
            reps, rows, [&](int i) { checksum += k2::sample_token(logits[static_cast<size_t>(i)], context).token_id; });
    };
    k2::SamplingParams plain;  // temperature 1, no top-k / top-p / min-p: what the benchmarks send
    k2::SamplingParams greedy;
    greedy.temperature = 0.0;
    k2::SamplingParams top_p;
    top_p.temperature = 0.7;
    top_p.top_p = 0.9;
    const double baseline = median_us_per_row(
        reps, rows, [&](int i) { checksum += baseline_draw(logits[static_cast<size_t>(i)], 1.0, rng); });
    std::printf("| case (vocab %d, %d rows x %d passes) | us per row |\n|---|---:|\n", vocab, rows, reps);
    std::printf("| temperature 1, previous draw (baseline) | %.1f |\n", baseline);
    std::printf("| temperature 1 (sample_token) | %.1f |\n", run(plain));
    std::printf("| greedy (sample_token) | %.1f |\n", run(greedy));
    std::printf("| temperature 0.7, top-p 0.9 (sample_token) | %.1f |\n", run(top_p));
    std::printf("(checksum %lld)\n", static_cast<long long>(checksum));
    return 0;
}

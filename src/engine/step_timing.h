// StepTiming: where the engine thread's time goes per step (K2_STEP_TIMING=1), so that a GPU run shows how much
// of the time per output token is host work the GPU waits for. Step thread only.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <string>

namespace k2 {

enum class StepPhase : uint8_t { Schedule, Build, Submit, Wait, Sample, Output };

class StepTiming {
public:
    static constexpr int kNumPhases = 6;
    static constexpr uint64_t kLogEvery = 1000;  // steps between log lines

    // Enabled by the environment variable K2_STEP_TIMING=1; a disabled timer does nothing.
    explicit StepTiming(bool async_scheduling);
    bool enabled() const { return m_enabled; }

    // Starts a step's clock: the time until the next lap() is charged to that lap's phase.
    void begin();
    void lap(StepPhase phase);
    // Ends a step; every kLogEvery steps logs the mean of the last interval.
    void end_step();
    // Logs the mean over all steps (at shutdown).
    void log_total() const;

private:
    using Clock = std::chrono::steady_clock;
    struct Sums {
        std::array<double, kNumPhases> ms{};
        uint64_t steps = 0;
    };
    std::string format(const Sums& sums, const char* label) const;

    bool m_enabled = false;
    bool m_async = false;
    Clock::time_point m_last;
    Sums m_interval;
    Sums m_total;
};

}  // namespace k2

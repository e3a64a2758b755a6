#include "engine/step_timing.h"

#include <cstdlib>
#include <cstring>

#include "core/log.h"

namespace k2 {

StepTiming::StepTiming(bool async_scheduling) : m_async(async_scheduling) {
    const char* value = std::getenv("K2_STEP_TIMING");
    m_enabled = value != nullptr && std::strcmp(value, "1") == 0;
}

void StepTiming::begin() {
    if (m_enabled) m_last = Clock::now();
}

void StepTiming::lap(StepPhase phase) {
    if (!m_enabled) return;
    const auto now = Clock::now();
    const double ms = std::chrono::duration<double, std::milli>(now - m_last).count();
    m_interval.ms[static_cast<size_t>(phase)] += ms;
    m_total.ms[static_cast<size_t>(phase)] += ms;
    m_last = now;
}

void StepTiming::end_step() {
    if (!m_enabled) return;
    m_interval.steps += 1;
    m_total.steps += 1;
    if (m_interval.steps >= kLogEvery) {
        K2_INFO("{}", format(m_interval, "last"));
        m_interval = Sums{};
    }
}

void StepTiming::log_total() const {
    if (m_enabled && m_total.steps > 0) K2_INFO("{}", format(m_total, "all"));
}

std::string StepTiming::format(const Sums& sums, const char* label) const {
    const auto steps = static_cast<double>(sums.steps);
    double total = 0.0;
    for (const double ms : sums.ms) total += ms;
    const auto mean = [&](StepPhase phase) { return sums.ms[static_cast<size_t>(phase)] / steps; };
    // Without --async-scheduling "wait" is the whole Model::forward (submit stays 0).
    return fmt::format(
        "step timing ({} {} steps, {}, ms/step): schedule {:.3f} build {:.3f} submit {:.3f} wait {:.3f} sample "
        "{:.3f} output {:.3f} total {:.3f}",
        label, sums.steps, m_async ? "async scheduling" : "sync", mean(StepPhase::Schedule), mean(StepPhase::Build),
        mean(StepPhase::Submit), mean(StepPhase::Wait), mean(StepPhase::Sample), mean(StepPhase::Output),
        total / steps);
}

}  // namespace k2

#include "bench/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <fmt/format.h>

namespace k2::bench {

namespace {

std::string clock_text(double seconds) {
    const auto total = static_cast<int64_t>(seconds);
    return total >= 3600 ? fmt::format("{}:{:02}:{:02}", total / 3600, total / 60 % 60, total % 60)
                         : fmt::format("{:02}:{:02}", total / 60, total % 60);
}

}  // namespace

ProgressBar::ProgressBar(int total, bool enabled)
    : m_total(total),
      m_enabled(enabled && total > 0),
      m_terminal(::isatty(STDERR_FILENO) != 0),
      m_start(std::chrono::steady_clock::now()),
      m_last_render(m_start) {
    if (m_enabled) {
        std::lock_guard lock(m_mutex);
        render(true);
    }
}

ProgressBar::~ProgressBar() { close(); }

void ProgressBar::update() {
    if (!m_enabled) {
        return;
    }
    std::lock_guard lock(m_mutex);
    ++m_done;
    render(m_done == m_total);
}

void ProgressBar::close() {
    if (!m_enabled) {
        return;
    }
    std::lock_guard lock(m_mutex);
    if (m_closed) {
        return;
    }
    m_closed = true;
    if (m_terminal) {
        std::fputc('\n', stderr);
        std::fflush(stderr);
    }
}

void ProgressBar::render(bool force) {
    const auto now = std::chrono::steady_clock::now();
    const double elapsed = std::chrono::duration<double>(now - m_start).count();
    if (!m_terminal) {
        // Plain lines for logs: one at each completed tenth.
        const int decile = m_done * 10 / m_total;
        if (decile > m_last_decile) {
            m_last_decile = decile;
            std::fprintf(stderr, "progress: %d/%d requests done (%d%%) after %.1f s\n", m_done, m_total,
                         m_done * 100 / m_total, elapsed);
        }
        return;
    }
    if (!force && now - m_last_render < std::chrono::milliseconds(100)) {
        return;
    }
    m_last_render = now;
    constexpr int kWidth = 30;
    const double fraction = static_cast<double>(m_done) / m_total;
    const int eighths = static_cast<int>(fraction * kWidth * 8);
    std::string bar;
    for (int i = 0; i < kWidth; ++i) {
        const int cell = std::min(8, std::max(0, eighths - i * 8));
        static const char* const kBlocks[] = {" ", "▏", "▎", "▍", "▌", "▋", "▊", "▉", "█"};
        bar += kBlocks[cell];
    }
    const double rate = elapsed > 0 ? m_done / elapsed : 0.0;
    const std::string remaining = rate > 0 ? clock_text((m_total - m_done) / rate) : "?";
    std::fprintf(stderr, "\r%3d%%|%s| %d/%d [%s<%s, %5.2fit/s]", static_cast<int>(fraction * 100), bar.c_str(),
                 m_done, m_total, clock_text(elapsed).c_str(), remaining.c_str(), rate);
    std::fflush(stderr);
}

}  // namespace k2::bench

// Progress of the benchmark run on stderr: a tqdm-like bar on a terminal, a plain line per 10% otherwise.
#pragma once

#include <chrono>
#include <mutex>

namespace k2::bench {

class ProgressBar {
public:
    ProgressBar(int total, bool enabled);
    ~ProgressBar();
    ProgressBar(const ProgressBar&) = delete;
    ProgressBar& operator=(const ProgressBar&) = delete;

    void update();  // one more request finished; thread-safe
    void close();   // final render and newline; idempotent

private:
    void render(bool force);

    std::mutex m_mutex;
    int m_total;
    int m_done = 0;
    int m_last_decile = 0;
    bool m_enabled;
    bool m_terminal;
    bool m_closed = false;
    std::chrono::steady_clock::time_point m_start;
    std::chrono::steady_clock::time_point m_last_render;
};

}  // namespace k2::bench

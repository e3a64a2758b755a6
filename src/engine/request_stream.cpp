// RequestStream (engine/engine_api.h): the engine thread pushes, one consumer pops.
#include "engine/engine_api.h"

namespace k2 {

void RequestStream::push(RequestOutput output) {
    std::function<void()> notify;
    {
        const std::lock_guard lock(m_mutex);
        if (output.finished) ++m_num_finished;
        m_queue.push_back(std::move(output));
        notify = m_notify;
    }
    m_cv.notify_all();
    if (notify) notify();
}

std::vector<RequestOutput> RequestStream::wait_pop(std::chrono::milliseconds timeout) {
    std::unique_lock lock(m_mutex);
    m_cv.wait_for(lock, timeout, [&] { return !m_queue.empty(); });
    std::vector<RequestOutput> outputs(std::make_move_iterator(m_queue.begin()), std::make_move_iterator(m_queue.end()));
    m_queue.clear();
    return outputs;
}

std::vector<RequestOutput> RequestStream::try_pop() {
    const std::lock_guard lock(m_mutex);
    std::vector<RequestOutput> outputs(std::make_move_iterator(m_queue.begin()), std::make_move_iterator(m_queue.end()));
    m_queue.clear();
    return outputs;
}

void RequestStream::set_notify(std::function<void()> notify) {
    const std::lock_guard lock(m_mutex);
    m_notify = std::move(notify);
}

bool RequestStream::all_finished() const {
    const std::lock_guard lock(m_mutex);
    return m_num_finished >= num_sequences;
}

}  // namespace k2

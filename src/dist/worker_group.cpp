#include "dist/worker_group.h"

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>

#include "core/error.h"
#include "core/log.h"

namespace k2::dist {

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kMonitorTick = std::chrono::milliseconds(50);

}  // namespace

std::string describe_exit_status(int status) {
    if (WIFSIGNALED(status)) {
        return fmt::format("exited with signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
    }
    if (WIFEXITED(status)) {
        return fmt::format("exited with status {}", WEXITSTATUS(status));
    }
    return fmt::format("stopped (wait status {:#x})", status);
}

WorkerGroup::WorkerGroup(WorkerGroupOptions options, FailureCallback on_failure)
    : m_options(std::move(options)), m_on_failure(std::move(on_failure)) {
    if (m_options.program.empty()) {
        m_options.program = "/proc/self/exe";
    }
    if (m_options.control_port == 0) {
        m_options.control_port = m_options.master_port + 1;
    }
    if (!m_options.ranks) {
        m_options.ranks.emplace();
        for (int r = 1; r < m_options.world_size; ++r) {
            m_options.ranks->push_back(r);
        }
    }
}

WorkerGroup::~WorkerGroup() {
    if (m_monitor.joinable()) {
        shutdown("driver exiting");
    }
}

int WorkerGroup::control_port() const { return m_options.control_port; }

void WorkerGroup::start() {
    if (m_options.serve_control) {
        m_server = std::make_unique<ControlServer>(m_options.master_addr, m_options.control_port);
    }
    m_started = Clock::now();
    for (int rank : *m_options.ranks) {
        K2_CHECK(rank >= 0 && rank < m_options.world_size, "rank {} outside world size {}", rank,
                 m_options.world_size);
        Worker worker;
        worker.rank = rank;
        spawn(worker);
        m_workers.push_back(worker);
    }
    for (int rank : m_options.remote_ranks) {
        K2_CHECK(m_options.serve_control, "remote ranks need the control socket");
        Worker worker;
        worker.rank = rank;
        worker.remote = true;
        m_workers.push_back(worker);
    }
    m_monitor = std::thread([this] { monitor(); });
}

void WorkerGroup::spawn(Worker& worker) {
    // Everything the child needs is built before fork: after it only async-signal-safe calls are allowed.
    std::vector<std::string> args = {m_options.program,
                                     "worker",
                                     "--rank",
                                     std::to_string(worker.rank),
                                     "--world-size",
                                     std::to_string(m_options.world_size),
                                     "--master-addr",
                                     m_options.master_addr,
                                     "--master-port",
                                     std::to_string(m_options.master_port),
                                     "--control-port",
                                     std::to_string(m_options.control_port)};
    args.insert(args.end(), m_options.extra_args.begin(), m_options.extra_args.end());
    std::vector<char*> argv;
    for (std::string& arg : args) {
        argv.push_back(arg.data());
    }
    argv.push_back(nullptr);
    const pid_t parent = getpid();
    const pid_t pid = fork();
    K2_CHECK(pid >= 0, "fork for rank {} failed: {}", worker.rank, std::strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the driver
        if (getppid() != parent) {
            _exit(1);
        }
        execv(argv[0], argv.data());
        _exit(127);
    }
    worker.pid = pid;
    K2_INFO("started rank {} (pid {})", worker.rank, pid);
}

void WorkerGroup::monitor() {
    auto last_beat = Clock::now() - kHeartbeatInterval;
    while (!m_stop) {
        if (!m_server) {  // a launcher only: waitpid is all there is to watch
            std::this_thread::sleep_for(kMonitorTick);
            check_children(Clock::now());
            continue;
        }
        if (auto received = m_server->receive(kMonitorTick)) {
            on_message(std::move(*received));
        }
        const auto now = Clock::now();
        flush_outbox();
        if (now - last_beat >= kHeartbeatInterval) {
            m_server->broadcast(Heartbeat{0, static_cast<int32_t>(getpid()), 0});
            last_beat = now;
        }
        check_children(now);
    }
}

void WorkerGroup::on_message(ReceivedMessage received) {
    std::string failure;
    {
        std::lock_guard lock(m_mutex);
        Worker* worker = nullptr;
        for (Worker& w : m_workers) {
            worker = w.rank == received.rank ? &w : worker;
        }
        if (worker == nullptr) {
            K2_WARN("control message from rank {}, which is not part of this group; ignored", received.rank);
            return;
        }
        if (const auto* beat = std::get_if<Heartbeat>(&received.message)) {
            worker->last_heartbeat = Clock::now();
            worker->heard_from = true;
            worker->step = beat->step_id;
            if (worker->remote) {
                worker->pid = beat->pid;
            }
        } else if (const auto* status = std::get_if<WorkerStatus>(&received.message); status && !status->loaded) {
            failure = fmt::format("rank {} (pid {}) failed: {}", worker->rank, worker->pid, status->error);
        } else {
            m_inbox.push_back(std::move(received));
        }
        m_cv.notify_all();
    }
    if (!failure.empty() && !this->failure()) {
        fail(failure, received.rank);
    }
}

void WorkerGroup::flush_outbox() {
    std::deque<std::pair<int, ControlMessage>> outbox;
    {
        std::lock_guard lock(m_mutex);
        outbox.swap(m_outbox);
    }
    for (const auto& [rank, message] : outbox) {
        if (rank < 0) {
            m_server->broadcast(message);
        } else {
            m_server->send_to(rank, message);
        }
    }
}

void WorkerGroup::check_children(Clock::time_point now) {
    std::string failure;
    int failed_rank = -1;
    {
        std::lock_guard lock(m_mutex);
        if (m_failure || m_shutting_down) {
            return;
        }
        for (Worker& worker : m_workers) {
            int status = 0;
            if (!worker.remote && !worker.exited && waitpid(worker.pid, &status, WNOHANG) == worker.pid) {
                worker.exited = true;
                worker.status = status;
                if (m_options.exit_zero_is_failure || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                    failure =
                        fmt::format("rank {} (pid {}) {}", worker.rank, worker.pid, describe_exit_status(status));
                }
            } else if (!m_server) {
                continue;  // a launcher only: no heartbeats to check
            } else if (!worker.exited && worker.heard_from && now - worker.last_heartbeat > m_options.heartbeat_timeout) {
                failure = fmt::format("rank {} (pid {}) sent no heartbeat for {} ms", worker.rank, worker.pid,
                                      m_options.heartbeat_timeout.count());
            } else if (!worker.exited && !worker.heard_from && now - m_started > m_options.startup_timeout) {
                failure = fmt::format("rank {} (pid {}) did not start within {} ms", worker.rank, worker.pid,
                                      m_options.startup_timeout.count());
            }
            if (!failure.empty()) {
                failed_rank = worker.rank;
                break;
            }
        }
    }
    if (!failure.empty()) {
        fail(failure, failed_rank);
    }
}

void WorkerGroup::fail(const std::string& message, int rank) {
    pid_t pid = -1;
    {
        std::lock_guard lock(m_mutex);
        m_failure = message;
        for (const Worker& worker : m_workers) {
            if (worker.rank == rank) {
                pid = worker.pid;
            }
        }
        m_cv.notify_all();
    }
    K2_ERROR("{}; stopping the worker group", message);
    if (m_server) {
        m_server->broadcast(RankFailed{rank, static_cast<int32_t>(pid), message});
    }
    terminate_all();
    if (m_on_failure) {
        m_on_failure(message);
    }
}

// SIGTERM everybody still running, then SIGKILL whoever is left after the grace period; reaps all.
void WorkerGroup::terminate_all() {
    std::lock_guard lock(m_mutex);
    for (Worker& worker : m_workers) {
        worker.exited = worker.exited || worker.remote;  // another node's launcher owns those processes
        if (!worker.exited) {
            kill(worker.pid, SIGTERM);
        }
    }
    const auto deadline = Clock::now() + m_options.kill_grace;
    bool all_gone = false;
    while (!all_gone) {
        all_gone = true;
        for (Worker& worker : m_workers) {
            int status = 0;
            if (!worker.exited && waitpid(worker.pid, &status, WNOHANG) == worker.pid) {
                worker.exited = true;
                worker.status = status;
            }
            all_gone = all_gone && worker.exited;
        }
        if (!all_gone && Clock::now() >= deadline) {
            for (Worker& worker : m_workers) {
                if (!worker.exited) {
                    kill(worker.pid, SIGKILL);
                    waitpid(worker.pid, &worker.status, 0);
                    worker.exited = true;
                }
            }
            break;
        }
        if (!all_gone) {
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    }
}

bool WorkerGroup::wait_ready(std::chrono::milliseconds timeout) {
    std::unique_lock lock(m_mutex);
    return m_cv.wait_for(lock, timeout, [this] {
        if (m_failure) {
            return true;
        }
        for (const Worker& worker : m_workers) {
            if (!worker.heard_from) {
                return false;
            }
        }
        return true;
    }) && !m_failure;
}

bool WorkerGroup::wait_step(uint64_t step, std::chrono::milliseconds timeout) {
    std::unique_lock lock(m_mutex);
    return m_cv.wait_for(lock, timeout, [this, step] {
        if (m_failure) {
            return true;
        }
        for (const Worker& worker : m_workers) {
            if (worker.step < step) {
                return false;
            }
        }
        return true;
    }) && !m_failure;
}

void WorkerGroup::broadcast(const ControlMessage& message) { send_to(-1, message); }

void WorkerGroup::send_to(int rank, const ControlMessage& message) {
    {
        std::lock_guard lock(m_mutex);
        m_outbox.emplace_back(rank, message);
    }
    if (m_server) {
        m_server->wake();
    }
}

std::optional<ReceivedMessage> WorkerGroup::receive(std::chrono::milliseconds timeout) {
    std::unique_lock lock(m_mutex);
    m_cv.wait_for(lock, timeout, [this] { return m_failure || !m_inbox.empty(); });
    if (m_failure || m_inbox.empty()) {
        return std::nullopt;
    }
    ReceivedMessage message = std::move(m_inbox.front());
    m_inbox.pop_front();
    return message;
}

void WorkerGroup::shutdown(const std::string& reason) {
    {
        std::lock_guard lock(m_mutex);
        m_shutting_down = true;
        m_outbox.emplace_back(-1, Shutdown{reason});
    }
    if (m_server) {
        m_server->wake();
    }
    // Give the monitor a moment to deliver Shutdown, and the workers to exit on their own.
    const auto deadline = Clock::now() + m_options.kill_grace;
    while (Clock::now() < deadline) {
        bool all_gone = true;
        {
            std::lock_guard lock(m_mutex);
            for (Worker& worker : m_workers) {
                int status = 0;
                if (!worker.remote && !worker.exited && waitpid(worker.pid, &status, WNOHANG) == worker.pid) {
                    worker.exited = true;
                    worker.status = status;
                }
                all_gone = all_gone && (worker.exited || worker.remote);
            }
        }
        if (all_gone) {
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    m_stop = true;
    if (m_monitor.joinable()) {
        m_monitor.join();
    }
    terminate_all();
}

std::optional<std::string> WorkerGroup::failure() const {
    std::lock_guard lock(m_mutex);
    return m_failure;
}

bool WorkerGroup::all_exited() const {
    std::lock_guard lock(m_mutex);
    for (const Worker& worker : m_workers) {
        if (!worker.remote && !worker.exited) {
            return false;
        }
    }
    return true;
}

std::vector<std::pair<int, pid_t>> WorkerGroup::workers() const {
    std::lock_guard lock(m_mutex);
    std::vector<std::pair<int, pid_t>> out;
    for (const Worker& worker : m_workers) {
        out.emplace_back(worker.rank, worker.pid);
    }
    return out;
}

WorkerControl::WorkerControl(const std::string& master_addr, int control_port, int rank,
                             std::chrono::milliseconds driver_timeout)
    : m_rank(rank), m_driver_timeout(driver_timeout),
      m_client(std::make_unique<ControlClient>(master_addr, control_port, rank)) {
    m_thread = std::thread([this] { loop(); });
}

WorkerControl::~WorkerControl() {
    m_stop = true;
    if (m_thread.joinable()) {
        m_thread.join();
    }
}

void WorkerControl::send(const ControlMessage& message) {
    {
        std::lock_guard lock(m_mutex);
        m_outbox.push_back(message);
    }
    m_client->wake();
}

void WorkerControl::flush(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
        {
            std::lock_guard lock(m_mutex);
            if (m_outbox.empty()) {
                break;
            }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    // ZeroMQ sends from its I/O thread; give it a moment to put the last frame on the wire (linger is 0).
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
}

void WorkerControl::loop() {
    auto last_sent = Clock::now() - kHeartbeatInterval;
    auto last_heard = Clock::now();
    bool heard_driver = false;  // another node's ranks may start well before the driver binds its socket
    while (!m_stop) {
        std::deque<ControlMessage> outbox;
        {
            std::lock_guard lock(m_mutex);
            outbox.swap(m_outbox);
        }
        for (const ControlMessage& message : outbox) {
            m_client->send(message);
        }
        const auto now = Clock::now();
        if (now - last_sent >= kHeartbeatInterval) {
            m_client->send(Heartbeat{m_rank, static_cast<int32_t>(getpid()), m_step.load()});
            last_sent = now;
        }
        if (heard_driver && now - last_heard > m_driver_timeout) {
            K2_ERROR("rank {}: no heartbeat from the driver (rank 0) for {} ms; exiting", m_rank,
                     m_driver_timeout.count());
            std::_Exit(1);
        }
        if (!heard_driver && now - last_heard > kDriverStartupTimeout) {
            K2_ERROR("rank {}: the driver (rank 0) did not answer within {} s; exiting", m_rank,
                     std::chrono::duration_cast<std::chrono::seconds>(kDriverStartupTimeout).count());
            std::_Exit(1);
        }
        std::optional<ControlMessage> message = m_client->receive(std::chrono::milliseconds(50));
        if (!message) {
            continue;
        }
        last_heard = Clock::now();
        heard_driver = true;
        if (const auto* failed = std::get_if<RankFailed>(&*message)) {
            // The main thread may be blocked inside a collective with the dead rank: exit from here.
            K2_ERROR("rank {}: exiting because {}", m_rank, failed->reason);
            std::_Exit(1);
        }
        if (std::holds_alternative<Heartbeat>(*message)) {
            continue;
        }
        std::lock_guard lock(m_mutex);
        m_inbox.push_back(std::move(*message));
        m_cv.notify_all();
    }
}

std::optional<ControlMessage> WorkerControl::next(std::chrono::milliseconds timeout) {
    std::unique_lock lock(m_mutex);
    if (!m_cv.wait_for(lock, timeout, [this] { return !m_inbox.empty(); })) {
        return std::nullopt;
    }
    ControlMessage message = std::move(m_inbox.front());
    m_inbox.pop_front();
    return message;
}

}  // namespace k2::dist

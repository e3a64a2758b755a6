// Process launch and liveness for one-process-per-rank groups.
//
// WorkerGroup (in the rank-0 / driver process): fork+exec's `<program> worker --rank R --world-size W
// --master-addr A --master-port P --control-port C <extra args>` for the ranks it hosts, then a monitor thread
// watches them two ways: waitpid (a rank that exits or is killed) and heartbeats over the control socket (a rank
// that hangs). On the first failure it tells every surviving rank (RankFailed), terminates them (SIGTERM, then
// SIGKILL after a grace period), and calls on_failure with a message like "rank 2 (pid 1234) exited with signal 9".
// Children also get PR_SET_PDEATHSIG so they cannot outlive a driver that was SIGKILLed.
//
// WorkerControl (in each worker): heartbeats to the driver, receives control messages, and exits the process
// (status 1, naming the failed rank) on RankFailed or when the driver falls silent; Shutdown is handed to the
// caller so it can exit cleanly.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "dist/control_channel.h"

namespace k2::dist {

inline constexpr auto kHeartbeatInterval = std::chrono::milliseconds(500);
// A worker waits this long for the driver's first message (it may start on another node before the driver).
inline constexpr auto kDriverStartupTimeout = std::chrono::seconds(120);

// "exited with status 3" / "exited with signal 9 (Killed)" for a waitpid status.
std::string describe_exit_status(int status);

struct WorkerGroupOptions {
    std::string program;                  // path of the k2 executable (default: /proc/self/exe)
    std::vector<std::string> extra_args;  // appended to every worker's command line
    int world_size = 1;
    // Ranks this process launches; nullopt: 1 .. world_size-1 (an empty list launches none: all ranks remote).
    std::optional<std::vector<int>> ranks;
    // Ranks started by another node's launcher (multi-node DP): watched through heartbeats only (no waitpid, never
    // signalled from here). Only with serve_control.
    std::vector<int> remote_ranks;
    // false: a launcher for ranks whose driver is on another node (`k2 serve --headless`): no control socket here,
    // children are watched with waitpid only.
    bool serve_control = true;
    // false: a rank that exits with status 0 finished (its driver shut it down) rather than failed.
    bool exit_zero_is_failure = true;
    std::string master_addr = "127.0.0.1";
    int master_port = 29501;
    int control_port = 0;                 // 0: master_port + 1
    std::chrono::milliseconds heartbeat_timeout{5000};  // silence after which a rank counts as hung
    std::chrono::milliseconds startup_timeout{60000};   // time for a rank to send its first heartbeat
    std::chrono::milliseconds kill_grace{2000};         // SIGTERM -> SIGKILL
};

class WorkerGroup {
public:
    using FailureCallback = std::function<void(const std::string& message)>;

    WorkerGroup(WorkerGroupOptions options, FailureCallback on_failure);
    ~WorkerGroup();  // shuts the group down if still running
    WorkerGroup(const WorkerGroup&) = delete;
    WorkerGroup& operator=(const WorkerGroup&) = delete;

    void start();                                               // binds the control socket, spawns, monitors
    bool wait_ready(std::chrono::milliseconds timeout);         // true once every rank heartbeated
    // True once every rank's heartbeat reports step_id >= step (WorkerControl::set_step); false on timeout/failure.
    bool wait_step(uint64_t step, std::chrono::milliseconds timeout);
    void broadcast(const ControlMessage& message);              // e.g. a StepPlan to all workers
    void send_to(int rank, const ControlMessage& message);      // one rank (e.g. the ranks of one DP replica)
    // Next message a worker sent that is not a heartbeat (WorkerStatus, StepResult), in arrival order; nullopt on
    // timeout or once the group has failed.
    std::optional<ReceivedMessage> receive(std::chrono::milliseconds timeout);
    void shutdown(const std::string& reason);                   // Shutdown, wait, then kill stragglers
    std::optional<std::string> failure() const;
    std::vector<std::pair<int, pid_t>> workers() const;         // (rank, pid)
    bool all_exited() const;                                    // every rank launched here has exited
    int control_port() const;

private:
    struct Worker {
        int rank = 0;
        pid_t pid = -1;
        bool exited = false;
        int status = 0;
        std::chrono::steady_clock::time_point last_heartbeat{};
        bool heard_from = false;
        uint64_t step = 0;  // last step_id its heartbeat reported
        bool remote = false;  // started on another node: pid comes from its heartbeats
    };

    void spawn(Worker& worker);
    void monitor();
    void check_children(std::chrono::steady_clock::time_point now);
    void fail(const std::string& message, int rank);
    void on_message(ReceivedMessage received);
    void flush_outbox();
    void terminate_all();

    WorkerGroupOptions m_options;
    FailureCallback m_on_failure;
    std::unique_ptr<ControlServer> m_server;
    mutable std::mutex m_mutex;
    std::condition_variable m_cv;
    std::vector<Worker> m_workers;
    std::deque<std::pair<int, ControlMessage>> m_outbox;  // (rank, message); rank -1: every rank
    std::deque<ReceivedMessage> m_inbox;
    std::optional<std::string> m_failure;
    std::atomic<bool> m_stop{false};
    bool m_shutting_down = false;
    std::chrono::steady_clock::time_point m_started{};
    std::thread m_monitor;
};

class WorkerControl {
public:
    // Exits the process (after logging the reason) on RankFailed or driver silence; see the file comment.
    WorkerControl(const std::string& master_addr, int control_port, int rank,
                  std::chrono::milliseconds driver_timeout = std::chrono::milliseconds(5000));
    ~WorkerControl();
    WorkerControl(const WorkerControl&) = delete;
    WorkerControl& operator=(const WorkerControl&) = delete;

    void set_step(uint64_t step_id) { m_step = step_id; }
    // Queues a message to the driver (WorkerStatus, StepResult); sent by the control thread right away.
    void send(const ControlMessage& message);
    // Sends what is queued and waits until it left this process (or `timeout`), e.g. before exiting.
    void flush(std::chrono::milliseconds timeout);
    // Next StepPlan or Shutdown from the driver (heartbeats are consumed internally); nullopt on timeout.
    std::optional<ControlMessage> next(std::chrono::milliseconds timeout);

private:
    void loop();

    int m_rank;
    std::chrono::milliseconds m_driver_timeout;
    std::unique_ptr<ControlClient> m_client;
    std::atomic<uint64_t> m_step{0};
    std::atomic<bool> m_stop{false};
    std::mutex m_mutex;
    std::condition_variable m_cv;
    std::deque<ControlMessage> m_inbox;
    std::deque<ControlMessage> m_outbox;
    std::thread m_thread;
};

}  // namespace k2::dist

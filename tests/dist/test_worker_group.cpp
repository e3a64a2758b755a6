// The worker-group launcher with real fork+exec'd `worker` processes (issue 9, acceptance 3): killing one rank
// ends the whole group within 10 s with a message naming the rank; killing the driver takes the workers down.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <map>
#include <regex>
#include <string>
#include <thread>

#include "dist/worker_group.h"
#include "multiprocess.h"

#ifndef K2_WORKER_STUB
#error "K2_WORKER_STUB must name the worker stub executable"
#endif

namespace k2::dist {
namespace {

using Clock = std::chrono::steady_clock;

struct Driver {
    pid_t pid = -1;
    int out_fd = -1;  // driver's stdout+stderr
    std::string output;
};

Driver start_driver(int world_size, const std::string& task, const std::string& heartbeat_ms = "5000") {
    const int port = testing::free_port();
    int fds[2];
    EXPECT_EQ(pipe(fds), 0);
    const std::string world = std::to_string(world_size);
    const std::string port_text = std::to_string(port);
    const pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        close(fds[0]);
        execl(K2_WORKER_STUB, K2_WORKER_STUB, "worker", "--rank", "0", "--world-size", world.c_str(), "--spawn",
              "--master-addr", "127.0.0.1", "--master-port", port_text.c_str(), "--task", task.c_str(), "--heartbeat-timeout-ms", heartbeat_ms.c_str(), nullptr);
        _exit(127);
    }
    close(fds[1]);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    return Driver{pid, fds[0], ""};
}

void drain(Driver& driver) {
    char buf[4096];
    ssize_t n;
    while ((n = read(driver.out_fd, buf, sizeof(buf))) > 0) {
        driver.output.append(buf, static_cast<size_t>(n));
    }
}

// Waits for "worker group ready: ... rank1=PID ..." and returns rank -> pid (rank 0 included).
std::map<int, pid_t> wait_ready(Driver& driver) {
    const std::regex ready(R"(worker group ready: world_size=\d+ pid0=(\d+)((?: rank\d+=\d+)*))");
    const auto deadline = Clock::now() + std::chrono::seconds(30);
    std::smatch match;
    while (Clock::now() < deadline) {
        drain(driver);
        if (std::regex_search(driver.output, match, ready)) {
            std::map<int, pid_t> pids{{0, std::stoi(match[1])}};
            const std::string rest = match[2];
            const std::regex item(R"( rank(\d+)=(\d+))");
            for (auto it = std::sregex_iterator(rest.begin(), rest.end(), item); it != std::sregex_iterator(); ++it) {
                pids[std::stoi((*it)[1])] = std::stoi((*it)[2]);
            }
            return pids;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ADD_FAILURE() << "group never became ready; output:\n" << driver.output;
    return {};
}

// Waits for the driver to exit; returns its wait status, or -1 after `timeout` (then kills it).
int wait_exit(Driver& driver, std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
        int status = 0;
        if (waitpid(driver.pid, &status, WNOHANG) == driver.pid) {
            drain(driver);
            return status;
        }
        drain(driver);
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    kill(driver.pid, SIGKILL);
    waitpid(driver.pid, nullptr, 0);
    return -1;
}

bool alive(pid_t pid) {
    // A worker reparented to init is reaped there; one still a zombie of ours counts as gone too.
    if (kill(pid, 0) != 0) {
        return false;
    }
    char path[64];
    std::snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE* f = std::fopen(path, "r");
    if (f == nullptr) {
        return false;
    }
    int ignored_pid = 0;
    char comm[256];
    char state = '?';
    const int fields = std::fscanf(f, "%d %255s %c", &ignored_pid, comm, &state);
    std::fclose(f);
    return fields == 3 && state != 'Z';
}

bool all_gone(const std::map<int, pid_t>& pids, std::chrono::milliseconds within) {
    const auto deadline = Clock::now() + within;
    while (Clock::now() < deadline) {
        bool any = false;
        for (const auto& [rank, pid] : pids) {
            any = any || alive(pid);
        }
        if (!any) {
            return true;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
}

TEST(WorkerGroup, KilledRankEndsTheGroupNamingIt) {
    Driver driver = start_driver(4, "idle");
    const std::map<int, pid_t> pids = wait_ready(driver);
    ASSERT_EQ(pids.size(), 4u) << driver.output;
    const pid_t victim = pids.at(2);
    const auto killed_at = Clock::now();
    ASSERT_EQ(kill(victim, SIGKILL), 0);
    const int status = wait_exit(driver, std::chrono::seconds(10));
    const double seconds = std::chrono::duration<double>(Clock::now() - killed_at).count();
    ASSERT_NE(status, -1) << "driver still running 10 s after rank 2 was killed:\n" << driver.output;
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status;
    EXPECT_LT(seconds, 10.0);
    const std::string expected = "rank 2 (pid " + std::to_string(victim) + ") exited with signal 9";
    EXPECT_NE(driver.output.find(expected), std::string::npos) << driver.output;
    EXPECT_TRUE(all_gone(pids, std::chrono::seconds(5))) << "a rank outlived the group";
}

// A rank that stops answering (SIGSTOP: alive for waitpid, silent on the control socket) is a hang.
TEST(WorkerGroup, HungRankIsDetectedByHeartbeat) {
    Driver driver = start_driver(3, "idle", "1000");
    const std::map<int, pid_t> pids = wait_ready(driver);
    ASSERT_EQ(pids.size(), 3u) << driver.output;
    ASSERT_EQ(kill(pids.at(1), SIGSTOP), 0);
    const int status = wait_exit(driver, std::chrono::seconds(10));
    ASSERT_NE(status, -1) << driver.output;
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status;
    const std::string expected = "rank 1 (pid " + std::to_string(pids.at(1)) + ") sent no heartbeat for 1000 ms";
    EXPECT_NE(driver.output.find(expected), std::string::npos) << driver.output;
    EXPECT_TRUE(all_gone(pids, std::chrono::seconds(5)));
}

TEST(WorkerGroup, KilledDriverTakesWorkersDown) {
    Driver driver = start_driver(3, "idle");
    const std::map<int, pid_t> pids = wait_ready(driver);
    ASSERT_EQ(pids.size(), 3u) << driver.output;
    ASSERT_EQ(kill(driver.pid, SIGKILL), 0);
    waitpid(driver.pid, nullptr, 0);
    EXPECT_TRUE(all_gone(pids, std::chrono::seconds(10)));
}

TEST(WorkerGroup, CollectivesTaskRunsAndShutsDownCleanly) {
    Driver driver = start_driver(4, "collectives");
    const int status = wait_exit(driver, std::chrono::seconds(30));
    ASSERT_NE(status, -1) << driver.output;
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << driver.output;
    for (int rank = 0; rank < 4; ++rank) {
        EXPECT_NE(driver.output.find("rank " + std::to_string(rank) + ": collectives ok"), std::string::npos)
            << driver.output;
    }
}

// StepPlans (a ForwardBatch each) reach every worker intact and in order; workers acknowledge via heartbeats.
TEST(WorkerGroup, StepPlansReachEveryRank) {
    Driver driver = start_driver(3, "steps");
    const int status = wait_exit(driver, std::chrono::seconds(30));
    ASSERT_NE(status, -1) << driver.output;
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << driver.output;
    EXPECT_NE(driver.output.find("all ranks at step 5"), std::string::npos) << driver.output;
}

TEST(WorkerGroup, DescribesExitStatus) {
    EXPECT_EQ(describe_exit_status(SIGKILL), "exited with signal 9 (Killed)");
    EXPECT_EQ(describe_exit_status(3 << 8), "exited with status 3");
}

}  // namespace
}  // namespace k2::dist

// Runs a function in `world_size` forked processes (real separate processes talking over loopback TCP), one per
// rank, and reports which ranks failed. Children report failure by throwing; gtest assertions do not cross
// fork(), so checks inside ranks use K2_CHECK.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <exception>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace k2::dist::testing {

inline bool can_bind(int port) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    close(fd);
    return ok;
}

// A loopback port P with P and P + 1 currently free (the launcher uses P for the rendezvous store and P + 1 for
// control). Chosen below Linux's ephemeral range (32768+), so the kernel does not hand it to the Gloo and
// ZeroMQ connections of tests running in parallel; the random start keeps parallel tests apart.
inline int free_port() {
    static std::mt19937 rng(static_cast<unsigned>(getpid()) * 2654435761u ^
                            static_cast<unsigned>(std::chrono::steady_clock::now().time_since_epoch().count()));
    for (int attempt = 0; attempt < 1000; ++attempt) {
        const int port = 20000 + static_cast<int>(rng() % 12000);
        if (can_bind(port) && can_bind(port + 1)) {
            return port;
        }
    }
    return 0;
}

// Returns "" when every rank exited 0, else a description of the failures.
inline std::string run_ranks(int world_size, const std::function<void(int rank, int port)>& fn,
                             std::chrono::seconds timeout = std::chrono::seconds(60)) {
    const int port = free_port();
    std::fflush(stdout);
    std::fflush(stderr);
    std::vector<pid_t> pids;
    for (int rank = 0; rank < world_size; ++rank) {
        const pid_t pid = fork();
        if (pid == 0) {
            int code = 0;
            try {
                fn(rank, port);
            } catch (const std::exception& e) {
                std::fprintf(stderr, "rank %d failed: %s\n", rank, e.what());
                code = 1;
            }
            std::fflush(stdout);
            std::fflush(stderr);
            _exit(code);
        }
        pids.push_back(pid);
    }
    std::string failures;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::vector<bool> done(world_size, false);
    int remaining = world_size;
    while (remaining > 0) {
        for (int rank = 0; rank < world_size; ++rank) {
            int status = 0;
            if (!done[rank] && waitpid(pids[rank], &status, WNOHANG) == pids[rank]) {
                done[rank] = true;
                --remaining;
                if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                    failures += "rank " + std::to_string(rank) + " failed (status " + std::to_string(status) + "); ";
                }
            }
        }
        if (remaining > 0 && std::chrono::steady_clock::now() > deadline) {
            for (int rank = 0; rank < world_size; ++rank) {
                if (!done[rank]) {
                    kill(pids[rank], SIGKILL);
                    waitpid(pids[rank], nullptr, 0);
                    failures += "rank " + std::to_string(rank) + " timed out; ";
                }
            }
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return failures;
}

}  // namespace k2::dist::testing

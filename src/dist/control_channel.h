// ZeroMQ transport for the typed control messages (control_message.h). The driver (rank 0) binds one ROUTER
// socket on the configured address (never a wildcard); each worker connects a DEALER whose identity is its rank,
// so the driver can address ranks individually. Frames that fail to decode are dropped with a warning naming
// the sender: a malformed frame never reaches the caller and never crashes the process.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dist/control_message.h"

namespace k2::dist {

std::string tcp_endpoint(const std::string& host, int port);

struct ReceivedMessage {
    int rank = -1;  // sender's rank (from its socket identity)
    ControlMessage message;
};

class ControlServer {
public:
    ControlServer(const std::string& host, int port);  // binds tcp://host:port
    ~ControlServer();
    ControlServer(const ControlServer&) = delete;
    ControlServer& operator=(const ControlServer&) = delete;

    // Waits up to `timeout` for one well-formed message; nullopt on timeout or after wake().
    std::optional<ReceivedMessage> receive(std::chrono::milliseconds timeout);
    // Thread-safe: makes a receive() in progress (or the next one) return at once, so the thread that owns the
    // socket can send what other threads queued without waiting out its poll timeout.
    void wake();
    void send_to(int rank, const ControlMessage& message);  // dropped if that rank never connected
    void broadcast(const ControlMessage& message);           // to every rank that has been heard from
    std::vector<int> known_ranks() const;

private:
    struct Impl;
    std::unique_ptr<Impl> m_impl;
};

class ControlClient {
public:
    ControlClient(const std::string& host, int port, int rank);  // connects tcp://host:port as `rank`
    ~ControlClient();
    ControlClient(const ControlClient&) = delete;
    ControlClient& operator=(const ControlClient&) = delete;

    void send(const ControlMessage& message);
    // Waits up to `timeout` for one well-formed message; nullopt on timeout or after wake().
    std::optional<ControlMessage> receive(std::chrono::milliseconds timeout);
    void wake();  // thread-safe, as ControlServer::wake
    // Raw bytes, for tests that feed the driver malformed frames.
    void send_raw(const std::vector<uint8_t>& bytes);

private:
    struct Impl;
    std::unique_ptr<Impl> m_impl;
};

}  // namespace k2::dist

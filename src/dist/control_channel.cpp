#include "dist/control_channel.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <set>

#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "core/error.h"
#include "core/log.h"

namespace k2::dist {

namespace {

// A ZeroMQ identity is the rank as text ("3"); anything else is not one of ours.
std::string identity_of(int rank) { return std::to_string(rank); }

int rank_of(const zmq::message_t& identity) {
    const std::string text = identity.to_string();
    if (text.empty() || text.size() > 6 || text.find_first_not_of("0123456789") != std::string::npos) {
        return -1;
    }
    return std::stoi(text);
}

std::optional<ControlMessage> decode_or_warn(const zmq::message_t& frame, const std::string& from) {
    try {
        return decode_control_message(
            std::span<const uint8_t>(static_cast<const uint8_t*>(frame.data()), frame.size()));
    } catch (const Error& e) {
        K2_WARN("dropping malformed control frame from {}: {}", from, e.message());
        return std::nullopt;
    }
}

// An eventfd polled next to the socket: wake() from any thread ends the owner's poll early.
class WakeFd {
public:
    WakeFd() : m_fd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) { K2_CHECK(m_fd >= 0, "eventfd failed"); }
    ~WakeFd() { close(m_fd); }
    WakeFd(const WakeFd&) = delete;
    WakeFd& operator=(const WakeFd&) = delete;
    int fd() const { return m_fd; }
    void wake() const {
        const uint64_t one = 1;
        [[maybe_unused]] const ssize_t n = write(m_fd, &one, sizeof(one));
    }
    void drain() const {
        uint64_t value = 0;
        [[maybe_unused]] const ssize_t n = read(m_fd, &value, sizeof(value));
    }

private:
    int m_fd;
};

// Polls the socket and the wake fd; true when the socket has input, false on timeout or wake.
bool poll_input(zmq::socket_t& socket, const WakeFd& wake, std::chrono::milliseconds timeout) {
    zmq::pollitem_t items[2] = {{socket.handle(), 0, ZMQ_POLLIN, 0}, {nullptr, wake.fd(), ZMQ_POLLIN, 0}};
    zmq::poll(items, 2, std::max(timeout, std::chrono::milliseconds(0)));
    if ((items[1].revents & ZMQ_POLLIN) != 0) {
        wake.drain();
        return (items[0].revents & ZMQ_POLLIN) != 0;
    }
    return (items[0].revents & ZMQ_POLLIN) != 0;
}

}  // namespace

std::string tcp_endpoint(const std::string& host, int port) {
    K2_CHECK(!host.empty(), "empty control address");
    K2_CHECK(port > 0 && port < 65536, "invalid control port {}", port);
    // IPv6 literals need brackets in a ZeroMQ endpoint.
    return host.find(':') != std::string::npos ? fmt::format("tcp://[{}]:{}", host, port)
                                               : fmt::format("tcp://{}:{}", host, port);
}

struct ControlServer::Impl {
    zmq::context_t context{1};
    zmq::socket_t socket{context, zmq::socket_type::router};
    std::set<int> ranks;
    WakeFd wake;
};

ControlServer::ControlServer(const std::string& host, int port) : m_impl(std::make_unique<Impl>()) {
    m_impl->socket.set(zmq::sockopt::linger, 0);
    m_impl->socket.set(zmq::sockopt::router_mandatory, false);
    if (host.find(':') != std::string::npos) {
        m_impl->socket.set(zmq::sockopt::ipv6, true);
    }
    const std::string endpoint = tcp_endpoint(host, port);
    try {
        m_impl->socket.bind(endpoint);
    } catch (const zmq::error_t& e) {
        K2_FAIL("control socket: cannot bind {}: {}", endpoint, e.what());
    }
}

ControlServer::~ControlServer() = default;

std::optional<ReceivedMessage> ControlServer::receive(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (!poll_input(m_impl->socket, m_impl->wake, left)) {
            return std::nullopt;
        }
        std::vector<zmq::message_t> parts;
        if (!zmq::recv_multipart(m_impl->socket, std::back_inserter(parts), zmq::recv_flags::dontwait)) {
            continue;
        }
        const int rank = parts.empty() ? -1 : rank_of(parts[0]);
        if (rank < 0 || parts.size() != 2) {
            K2_WARN("dropping control message with {} frames from an unknown peer", parts.size());
            continue;
        }
        std::optional<ControlMessage> message = decode_or_warn(parts[1], fmt::format("rank {}", rank));
        if (message) {
            m_impl->ranks.insert(rank);
            return ReceivedMessage{rank, std::move(*message)};
        }
    }
}

void ControlServer::send_to(int rank, const ControlMessage& message) {
    const std::string identity = identity_of(rank);
    const std::vector<uint8_t> bytes = encode_control_message(message);
    std::vector<zmq::const_buffer> out{zmq::buffer(identity), zmq::buffer(bytes)};
    zmq::send_multipart(m_impl->socket, out, zmq::send_flags::dontwait);
}

void ControlServer::broadcast(const ControlMessage& message) {
    for (int rank : m_impl->ranks) {
        send_to(rank, message);
    }
}

void ControlServer::wake() { m_impl->wake.wake(); }

std::vector<int> ControlServer::known_ranks() const { return {m_impl->ranks.begin(), m_impl->ranks.end()}; }

struct ControlClient::Impl {
    zmq::context_t context{1};
    zmq::socket_t socket{context, zmq::socket_type::dealer};
    WakeFd wake;
};

ControlClient::ControlClient(const std::string& host, int port, int rank) : m_impl(std::make_unique<Impl>()) {
    m_impl->socket.set(zmq::sockopt::linger, 0);
    m_impl->socket.set(zmq::sockopt::routing_id, identity_of(rank));
    if (host.find(':') != std::string::npos) {
        m_impl->socket.set(zmq::sockopt::ipv6, true);
    }
    m_impl->socket.connect(tcp_endpoint(host, port));
}

ControlClient::~ControlClient() = default;

void ControlClient::wake() { m_impl->wake.wake(); }

void ControlClient::send(const ControlMessage& message) { send_raw(encode_control_message(message)); }

void ControlClient::send_raw(const std::vector<uint8_t>& bytes) {
    m_impl->socket.send(zmq::buffer(bytes), zmq::send_flags::dontwait);
}

std::optional<ControlMessage> ControlClient::receive(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (!poll_input(m_impl->socket, m_impl->wake, left)) {
            return std::nullopt;
        }
        zmq::message_t frame;
        if (!m_impl->socket.recv(frame, zmq::recv_flags::dontwait)) {
            continue;
        }
        std::optional<ControlMessage> message = decode_or_warn(frame, "the driver");
        if (message) {
            return message;
        }
    }
}

}  // namespace k2::dist

#include "dist/control_channel.h"

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
        zmq::pollitem_t item{m_impl->socket.handle(), 0, ZMQ_POLLIN, 0};
        zmq::poll(&item, 1, std::max(left, std::chrono::milliseconds(0)));
        if ((item.revents & ZMQ_POLLIN) == 0) {
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

std::vector<int> ControlServer::known_ranks() const { return {m_impl->ranks.begin(), m_impl->ranks.end()}; }

struct ControlClient::Impl {
    zmq::context_t context{1};
    zmq::socket_t socket{context, zmq::socket_type::dealer};
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

void ControlClient::send(const ControlMessage& message) { send_raw(encode_control_message(message)); }

void ControlClient::send_raw(const std::vector<uint8_t>& bytes) {
    m_impl->socket.send(zmq::buffer(bytes), zmq::send_flags::dontwait);
}

std::optional<ControlMessage> ControlClient::receive(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        zmq::pollitem_t item{m_impl->socket.handle(), 0, ZMQ_POLLIN, 0};
        zmq::poll(&item, 1, std::max(left, std::chrono::milliseconds(0)));
        if ((item.revents & ZMQ_POLLIN) == 0) {
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

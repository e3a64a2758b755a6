#include "dist/tcp_store.h"

#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "core/error.h"

namespace k2::dist {

namespace {

constexpr auto kPollInterval = std::chrono::milliseconds(10);

std::string endpoint_of(const std::string& host, int port) { return fmt::format("tcp://{}:{}", host, port); }

std::vector<std::string> to_strings(std::vector<zmq::message_t>& parts) {
    std::vector<std::string> out;
    out.reserve(parts.size());
    for (zmq::message_t& part : parts) {
        out.push_back(part.to_string());
    }
    return out;
}

}  // namespace

struct TcpStore::Client {
    zmq::context_t context{1};
    zmq::socket_t socket{context, zmq::socket_type::req};
    zmq::socket_t server_socket;  // rank 0 only; moved into the server thread
};

TcpStore::TcpStore(const std::string& host, int port, bool is_server, std::chrono::milliseconds timeout)
    : m_endpoint(endpoint_of(host, port)), m_timeout(timeout), m_client(std::make_unique<Client>()) {
    if (is_server) {
        m_client->server_socket = zmq::socket_t(m_client->context, zmq::socket_type::router);
        m_client->server_socket.set(zmq::sockopt::linger, 0);
        try {
            m_client->server_socket.bind(m_endpoint);
        } catch (const zmq::error_t& e) {
            K2_FAIL("rendezvous store: cannot bind {} (--master-addr/--master-port): {}", m_endpoint, e.what());
        }
        m_server = std::thread([this] { serve(); });
    }
    m_client->socket.set(zmq::sockopt::linger, 0);
    m_client->socket.set(zmq::sockopt::rcvtimeo, static_cast<int>(m_timeout.count()));
    m_client->socket.set(zmq::sockopt::sndtimeo, static_cast<int>(m_timeout.count()));
    m_client->socket.connect(m_endpoint);
}

TcpStore::~TcpStore() {
    m_stop = true;
    if (m_server.joinable()) {
        m_server.join();
    }
}

// Rank 0's server thread: a map guarded by being touched only here.
void TcpStore::serve() {
    std::map<std::string, std::string> data;
    zmq::socket_t& socket = m_client->server_socket;
    while (!m_stop) {
        zmq::pollitem_t item{socket.handle(), 0, ZMQ_POLLIN, 0};
        zmq::poll(&item, 1, std::chrono::milliseconds(100));
        if ((item.revents & ZMQ_POLLIN) == 0) {
            continue;
        }
        std::vector<zmq::message_t> parts;
        if (!zmq::recv_multipart(socket, std::back_inserter(parts), zmq::recv_flags::dontwait)) {
            continue;
        }
        // ROUTER framing: [identity, empty, op, key, value].
        std::vector<std::string> reply{"error", "malformed request"};
        if (parts.size() == 5) {
            const std::string op = parts[2].to_string();
            const std::string key = parts[3].to_string();
            if (op == "set") {
                data[key] = parts[4].to_string();
                reply = {"ok", ""};
            } else if (op == "get") {
                const auto it = data.find(key);
                reply = it == data.end() ? std::vector<std::string>{"missing", ""}
                                         : std::vector<std::string>{"ok", it->second};
            }
        }
        std::vector<zmq::const_buffer> out{zmq::buffer(parts[0].data(), parts[0].size()), zmq::const_buffer()};
        out.push_back(zmq::buffer(reply[0]));
        out.push_back(zmq::buffer(reply[1]));
        zmq::send_multipart(socket, out, zmq::send_flags::dontwait);
    }
}

std::vector<std::string> TcpStore::request(const std::string& op, const std::string& key, const std::string& value) {
    std::lock_guard lock(m_client_mutex);
    std::vector<zmq::const_buffer> out{zmq::buffer(op), zmq::buffer(key), zmq::buffer(value)};
    K2_CHECK(zmq::send_multipart(m_client->socket, out).has_value(), "rendezvous store {}: send timed out",
             m_endpoint);
    std::vector<zmq::message_t> parts;
    K2_CHECK(zmq::recv_multipart(m_client->socket, std::back_inserter(parts)).has_value(),
             "rendezvous store {}: no answer within {} ms (is rank 0 running?)", m_endpoint, m_timeout.count());
    std::vector<std::string> reply = to_strings(parts);
    K2_CHECK(reply.size() == 2 && reply[0] != "error", "rendezvous store {}: bad reply", m_endpoint);
    return reply;
}

void TcpStore::set(const std::string& key, const std::vector<char>& data) {
    request("set", key, std::string(data.begin(), data.end()));
}

std::vector<char> TcpStore::get(const std::string& key) {
    const auto deadline = std::chrono::steady_clock::now() + m_timeout;
    while (true) {
        const std::vector<std::string> reply = request("get", key, "");
        if (reply[0] == "ok") {
            return std::vector<char>(reply[1].begin(), reply[1].end());
        }
        K2_CHECK(std::chrono::steady_clock::now() < deadline,
                 "rendezvous store {}: key '{}' not published within {} ms (a rank did not start?)", m_endpoint,
                 key, m_timeout.count());
        std::this_thread::sleep_for(kPollInterval);
    }
}

void TcpStore::wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (const std::string& key : keys) {
        while (request("get", key, "")[0] != "ok") {
            K2_CHECK(std::chrono::steady_clock::now() < deadline,
                     "rendezvous store {}: key '{}' not published within {} ms", m_endpoint, key, timeout.count());
            std::this_thread::sleep_for(kPollInterval);
        }
    }
}

}  // namespace k2::dist

// TcpStore: the key-value store Gloo's rendezvous needs (each rank publishes its listening address under a key and
// reads everybody else's), served by rank 0 over a ZeroMQ ROUTER socket bound to the configured master address
// only, so ranks on different hosts can meet without a shared filesystem. Gloo ships only file, hash and Redis
// stores; this plays the role of torch.distributed's TCPStore. The wire format is ZeroMQ multipart frames
// [op, key, value] -> [status, value]; the store lives only for the rendezvous and is never exposed further.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gloo/rendezvous/store.h>

namespace k2::dist {

class TcpStore final : public gloo::rendezvous::Store {
public:
    // is_server: rank 0 binds tcp://host:port and serves; every rank (rank 0 included) is also a client.
    TcpStore(const std::string& host, int port, bool is_server, std::chrono::milliseconds timeout);
    ~TcpStore() override;
    TcpStore(const TcpStore&) = delete;
    TcpStore& operator=(const TcpStore&) = delete;

    void set(const std::string& key, const std::vector<char>& data) override;
    std::vector<char> get(const std::string& key) override;  // waits for the key like Gloo's FileStore
    void wait(const std::vector<std::string>& keys) override { wait(keys, m_timeout); }
    void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override;

private:
    struct Client;
    void serve();
    std::vector<std::string> request(const std::string& op, const std::string& key, const std::string& value);

    std::string m_endpoint;
    std::chrono::milliseconds m_timeout;
    std::unique_ptr<Client> m_client;
    std::mutex m_client_mutex;
    std::thread m_server;
    std::atomic<bool> m_stop{false};
    std::atomic<bool> m_server_ready{false};
    std::string m_server_error;
};

}  // namespace k2::dist

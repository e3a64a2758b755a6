#include "cli/net_ports.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/error.h"

namespace k2::cli {

namespace {

bool can_bind(const std::string& host, int port) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    const bool ok = inet_pton(AF_INET, host.c_str(), &addr.sin_addr) == 1 &&
                    bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
    close(fd);
    return ok;
}

}  // namespace

int free_port_pair(const std::string& host) {
    for (int attempt = 0; attempt < 100; ++attempt) {
        const int fd = socket(AF_INET, SOCK_STREAM, 0);
        K2_CHECK(fd >= 0, "socket() failed while looking for a free --master-port");
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        K2_CHECK(inet_pton(AF_INET, host.c_str(), &addr.sin_addr) == 1,
                 "--master-addr {}: not an IPv4 address (pass --master-port explicitly)", host);
        socklen_t len = sizeof(addr);
        int port = 0;
        if (bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0 &&
            getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
            port = ntohs(addr.sin_port);
        }
        close(fd);
        if (port > 0 && port < 65535 && can_bind(host, port) && can_bind(host, port + 1))
            return port;
    }
    K2_FAIL("no free port pair on {} for the parallel job; pass --master-port", host);
}

std::string local_address_towards(const std::string& peer) {
    const int fd = socket(AF_INET, SOCK_DGRAM, 0);
    K2_CHECK(fd >= 0, "socket() failed");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(9);
    socklen_t len = sizeof(addr);
    char text[INET_ADDRSTRLEN] = {};
    const bool ok = inet_pton(AF_INET, peer.c_str(), &addr.sin_addr) == 1 &&
                    connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0 &&
                    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
                    inet_ntop(AF_INET, &addr.sin_addr, text, sizeof(text)) != nullptr;
    close(fd);
    K2_CHECK(ok, "--data-parallel-address {}: no route from this host (pass --host with this node's address)", peer);
    return text;
}

}  // namespace k2::cli

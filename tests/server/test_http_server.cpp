// HttpServer over real loopback sockets: keep-alive, 413 for large bodies, chunked streaming, and the
// disconnect callback that lets a request be aborted.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "server/http_server.h"

namespace k2::server {
namespace {

int connect_to(int port) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

void send_all(int fd, const std::string& data) {
    size_t sent = 0;
    while (sent < data.size()) {
        const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        sent += static_cast<size_t>(n);
    }
}

// Reads until `marker` has been seen (or EOF/timeout).
std::string read_until(int fd, const std::string& marker) {
    std::string out;
    char buf[4096];
    while (out.find(marker) == std::string::npos) {
        const ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0)
            break;
        out.append(buf, static_cast<size_t>(n));
    }
    return out;
}

class HttpServerTest : public ::testing::Test {
protected:
    void SetUp() override {
        HttpServerOptions options;
        options.host = "127.0.0.1";
        options.port = 0;
        options.num_threads = 2;
        options.max_body_bytes = 1000;
        m_server =
            std::make_unique<HttpServer>(options, [this](HttpRequest request, std::shared_ptr<ResponseWriter> writer) {
                if (request.path == "/stream") {
                    writer->start_stream(200, "text/event-stream");
                    writer->write("data: a\n\n");
                    writer->write("data: b\n\n");
                    writer->end();
                } else if (request.path == "/hang") {
                    writer->on_disconnect([this] { m_disconnected = true; });
                    writer->start_stream(200, "text/event-stream");
                    writer->write("data: first\n\n");
                    m_hanging = writer;  // never ends until the client leaves
                } else {
                    writer->send({200, "text/plain", request.method + " " + request.target + " " + request.body, {}});
                }
            });
        m_server->start();
    }
    void TearDown() override {
        m_hanging.reset();
        m_server->stop();
    }

    std::unique_ptr<HttpServer> m_server;
    std::shared_ptr<ResponseWriter> m_hanging;
    std::atomic<bool> m_disconnected{false};
};

TEST_F(HttpServerTest, KeepAliveServesSeveralRequestsOnOneConnection) {
    const int fd = connect_to(m_server->port());
    send_all(fd, "GET /a?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    const std::string first = read_until(fd, "GET /a?x=1 ");
    EXPECT_NE(first.find("HTTP/1.1 200 OK"), std::string::npos);
    EXPECT_NE(first.find("Connection: keep-alive"), std::string::npos);
    send_all(fd, "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    EXPECT_NE(read_until(fd, "POST /b hello").find("POST /b hello"), std::string::npos);
    close(fd);
}

TEST_F(HttpServerTest, BodyOverLimitIs413) {
    const int fd = connect_to(m_server->port());
    send_all(fd, "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + std::string(5000, 'x'));
    const std::string response = read_until(fd, "}}");
    EXPECT_EQ(response.rfind("HTTP/1.1 413 ", 0), 0u) << response;
    EXPECT_NE(response.find("Connection: close"), std::string::npos);
    close(fd);
}

TEST_F(HttpServerTest, StreamingUsesChunkedEncoding) {
    const int fd = connect_to(m_server->port());
    send_all(fd, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n");
    const std::string response = read_until(fd, "0\r\n\r\n");
    EXPECT_NE(response.find("Transfer-Encoding: chunked"), std::string::npos);
    EXPECT_NE(response.find("\r\n\r\n9\r\ndata: a\n\n\r\n9\r\ndata: b\n\n\r\n0\r\n\r\n"), std::string::npos)
        << response;
    close(fd);
}

TEST_F(HttpServerTest, ClientDisconnectIsReported) {
    const int fd = connect_to(m_server->port());
    send_all(fd, "GET /hang HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_NE(read_until(fd, "first").find("data: first"), std::string::npos);
    EXPECT_FALSE(m_disconnected.load());
    close(fd);
    for (int i = 0; i < 200 && !m_disconnected.load(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_TRUE(m_disconnected.load());
}

}  // namespace
}  // namespace k2::server

// Sockets, keep-alive, streaming and disconnects; the request parsing itself is http_request_parser.cpp (the
// code the fuzz target runs), so Beast stays out of this translation unit.
#include "server/http_server.h"

#include <array>
#include <boost/asio.hpp>
#include <optional>
#include <thread>

#include "core/error.h"
#include "core/log.h"

namespace k2::server {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;

namespace {

constexpr size_t kMaxWatchBufferBytes = 64u << 10;  // stop reading ahead of a pipelining client here
constexpr size_t kMaxDiscardBytes = 256u << 20;     // bytes of an oversized body read and dropped
constexpr std::chrono::seconds kDiscardTimeout{10};
constexpr size_t kReadChunkBytes = 16u << 10;

std::string serialize_head(int status, const std::string& content_type, const HttpHeaders& headers, bool keep_alive,
                           std::optional<size_t> content_length) {
    std::string head = fmt::format("HTTP/1.1 {} {}\r\n", status, http_status_text(status));
    head += "Server: k2\r\n";
    if (!content_type.empty())
        head += fmt::format("Content-Type: {}\r\n", content_type);
    for (const auto& [name, value] : headers)
        head += fmt::format("{}: {}\r\n", name, value);
    if (content_length) {
        head += fmt::format("Content-Length: {}\r\n", *content_length);
    } else {
        head += "Transfer-Encoding: chunked\r\n";
    }
    head += keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
    return head;
}

}  // namespace

std::string_view http_status_text(int status) {
    switch (status) {
        case 100:
            return "Continue";
        case 200:
            return "OK";
        case 400:
            return "Bad Request";
        case 401:
            return "Unauthorized";
        case 404:
            return "Not Found";
        case 405:
            return "Method Not Allowed";
        case 413:
            return "Payload Too Large";
        case 431:
            return "Request Header Fields Too Large";
        case 500:
            return "Internal Server Error";
        case 501:
            return "Not Implemented";
        case 503:
            return "Service Unavailable";
        default:
            return "Unknown";
    }
}

struct HttpServer::Impl {
    HttpServerOptions options;
    HttpHandler handler;
    asio::io_context ioc;
    std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
    tcp::acceptor acceptor{ioc};
    std::vector<std::thread> threads;
    std::atomic<size_t> num_connections{0};
    int bound_port = 0;

    void do_accept();
};

namespace {

class Connection : public std::enable_shared_from_this<Connection> {
public:
    Connection(tcp::socket socket, HttpServer::Impl& server)
        : m_socket(std::move(socket)),
          m_server(server),
          m_parser({server.options.max_body_bytes, server.options.max_header_bytes}),
          m_discard_timer(m_socket.get_executor()) {
        ++m_server.num_connections;
    }
    ~Connection() { --m_server.num_connections; }

    void start() { read_request(); }

    // --- ResponseWriter operations, always on the strand; `serial` names the request they belong to.
    void send(uint64_t serial, HttpResponse response) {
        if (!current(serial))
            return;
        queue(serialize_head(response.status, response.content_type, response.headers, m_keep_alive,
                             response.body.size()) +
              response.body);
        finish_response();
    }
    void start_stream(uint64_t serial, int status, const std::string& content_type, const HttpHeaders& headers) {
        if (!current(serial))
            return;
        queue(serialize_head(status, content_type, headers, m_keep_alive, std::nullopt));
    }
    void write(uint64_t serial, const std::string& data) {
        if (!current(serial) || data.empty())
            return;
        queue(fmt::format("{:x}\r\n", data.size()) + data + "\r\n");
    }
    void end(uint64_t serial) {
        if (!current(serial))
            return;
        queue("0\r\n\r\n");
        finish_response();
    }
    void set_on_disconnect(uint64_t serial, std::function<void()> fn) {
        if (serial != m_serial)
            return;
        if (m_closed && m_response_active) {
            asio::post(m_socket.get_executor(), std::move(fn));
            return;
        }
        m_on_disconnect = std::move(fn);
    }
    asio::any_io_executor executor() { return m_socket.get_executor(); }

private:
    bool current(uint64_t serial) const { return serial == m_serial && m_response_active && !m_closed; }

    // Starts the next request of the connection: parses what a pipelining client already sent, then reads.
    void read_request() {
        if (m_closed)
            return;
        m_parser.reset();
        m_sent_continue = false;
        parse_input();
    }

    void parse_input() {
        m_input.erase(0, m_parser.feed(m_input));
        if (m_parser.failed())
            return reject(m_parser.error()->status, m_parser.error()->message);
        if (m_parser.complete())
            return on_request();
        if (m_parser.expects_continue() && !m_sent_continue) {
            m_sent_continue = true;
            queue("HTTP/1.1 100 Continue\r\n\r\n");
        }
        m_socket.async_read_some(asio::buffer(m_read_buffer), [self = shared_from_this()](error_code ec, size_t n) {
            self->on_read(ec, n);
        });
    }

    void on_read(error_code ec, size_t n) {
        if (m_closed)
            return;
        m_input.append(m_read_buffer.data(), n);
        if (ec == asio::error::eof && m_parser.got_some()) {
            // Cut short: the parser says why (a half-closed client can still read the answer).
            m_parser.feed(m_input);
            m_parser.feed_eof();
            if (m_parser.failed())
                return reject(m_parser.error()->status, m_parser.error()->message);
        }
        if (ec)
            return close();
        parse_input();
    }

    void on_request() {
        m_keep_alive = m_parser.keep_alive();
        HttpRequest request = m_parser.take_request();
        error_code endpoint_ec;
        const tcp::endpoint remote = m_socket.remote_endpoint(endpoint_ec);
        if (!endpoint_ec)
            request.remote = fmt::format("{}:{}", remote.address().to_string(), remote.port());
        ++m_serial;
        m_response_active = true;
        watch();
        auto writer = make_writer();
        try {
            m_server.handler(std::move(request), writer);
        } catch (const std::exception& e) {
            K2_ERROR("unhandled error in HTTP handler: {}", e.what());
            send(
                m_serial,
                {500,
                 "application/json",
                 R"({"error":{"message":"internal server error","type":"InternalServerError","param":null,"code":500}})",
                 {}});
        }
    }

    std::shared_ptr<ResponseWriter> make_writer();

    // Answers an unreadable request and closes, reading and dropping what the client still sends so that
    // it gets to read the answer instead of a reset.
    void reject(int status, const std::string& message) {
        m_keep_alive = false;
        m_linger = true;
        ++m_serial;
        m_response_active = true;
        std::string body = R"({"error":{"message":")" + escape(message) + R"(","type":")" +
                           std::string(status == 413 ? "PayloadTooLarge" : "BadRequestError") +
                           R"(","param":null,"code":)" + std::to_string(status) + "}}";
        send(m_serial, {status, "application/json", std::move(body), {}});
    }

    static std::string escape(const std::string& text) {
        std::string out;
        for (char c : text) {
            if (c == '"' || c == '\\')
                out += '\\';
            if (static_cast<unsigned char>(c) >= 0x20)
                out += c;
        }
        return out;
    }

    // While a response is produced, a read stays pending so that a disconnect is noticed at once.
    void watch() {
        if (m_watching || m_closed || m_input.size() >= kMaxWatchBufferBytes)
            return;
        m_watching = true;
        m_socket.async_read_some(asio::buffer(m_read_buffer), [self = shared_from_this()](error_code ec, size_t n) {
            self->on_watch(ec, n);
        });
    }

    void on_watch(error_code ec, size_t n) {
        m_watching = false;
        if (m_closed)
            return;
        if (ec) {
            disconnected();
            return;
        }
        m_input.append(m_read_buffer.data(), n);
        if (m_response_active) {
            watch();
        } else {
            read_request();
        }
    }

    void disconnected() {
        if (m_response_active && m_on_disconnect) {
            auto fn = std::move(m_on_disconnect);
            m_on_disconnect = nullptr;
            fn();
        }
        close();
    }

    void finish_response() {
        m_response_active = false;
        m_on_disconnect = nullptr;
        if (!m_keep_alive) {
            m_close_after_write = true;
            if (!m_writing)
                after_writes();
        } else if (!m_watching) {
            // Posted, not called: a pipelining client's buffered requests answered at once must not recurse.
            asio::post(m_socket.get_executor(), [self = shared_from_this()] { self->read_request(); });
        }
    }

    void queue(std::string data) {
        if (m_closed)
            return;
        m_out_pending += data;
        if (!m_writing)
            do_write();
    }

    void do_write() {
        m_out_writing.swap(m_out_pending);
        m_out_pending.clear();
        m_writing = true;
        asio::async_write(m_socket, asio::buffer(m_out_writing),
                          [self = shared_from_this()](error_code ec, size_t) { self->on_write(ec); });
    }

    void on_write(error_code ec) {
        m_writing = false;
        m_out_writing.clear();
        if (ec) {
            disconnected();
            return;
        }
        if (!m_out_pending.empty()) {
            do_write();
        } else if (m_close_after_write) {
            after_writes();
        }
    }

    void after_writes() {
        if (!m_linger) {
            close();
            return;
        }
        error_code ignored;
        m_socket.shutdown(tcp::socket::shutdown_send, ignored);
        m_discard_timer.expires_after(kDiscardTimeout);
        m_discard_timer.async_wait([self = shared_from_this()](error_code ec) {
            if (!ec)
                self->close();
        });
        discard();
    }

    void discard() {
        m_socket.async_read_some(asio::buffer(m_discard_buffer),
                                 [self = shared_from_this()](error_code ec, size_t n) {
                                     self->m_discarded_bytes += n;
                                     if (ec || self->m_discarded_bytes > kMaxDiscardBytes) {
                                         self->close();
                                     } else {
                                         self->discard();
                                     }
                                 });
    }

    void close() {
        if (m_closed)
            return;
        m_closed = true;
        error_code ignored;
        m_discard_timer.cancel();
        m_socket.shutdown(tcp::socket::shutdown_both, ignored);
        m_socket.close(ignored);
    }

    tcp::socket m_socket;
    HttpServer::Impl& m_server;
    HttpRequestParser m_parser;
    std::string m_input;  // received, not yet parsed: the rest of a request, or the next ones of a pipelining client
    std::array<char, kReadChunkBytes> m_read_buffer{};
    bool m_sent_continue = false;
    std::string m_out_pending;
    std::string m_out_writing;
    bool m_writing = false;
    bool m_watching = false;
    bool m_keep_alive = true;
    bool m_close_after_write = false;
    bool m_closed = false;
    bool m_linger = false;
    bool m_response_active = false;
    uint64_t m_serial = 0;
    std::function<void()> m_on_disconnect;
    asio::steady_timer m_discard_timer;
    std::array<char, 16384> m_discard_buffer{};
    size_t m_discarded_bytes = 0;
};

class Writer final : public ResponseWriter {
public:
    Writer(std::shared_ptr<Connection> connection, uint64_t serial)
        : m_connection(std::move(connection)), m_serial(serial) {}

    void send(HttpResponse response) override {
        asio::dispatch(m_connection->executor(), [c = m_connection, s = m_serial, r = std::move(response)]() mutable {
            c->send(s, std::move(r));
        });
    }
    void start_stream(int status, std::string content_type, HttpHeaders headers) override {
        asio::dispatch(m_connection->executor(), [c = m_connection, s = m_serial, status, ct = std::move(content_type),
                                                  h = std::move(headers)] { c->start_stream(s, status, ct, h); });
    }
    void write(std::string data) override {
        asio::dispatch(m_connection->executor(),
                       [c = m_connection, s = m_serial, d = std::move(data)] { c->write(s, d); });
    }
    void end() override {
        asio::dispatch(m_connection->executor(), [c = m_connection, s = m_serial] { c->end(s); });
    }
    void post(std::function<void()> fn) override { asio::post(m_connection->executor(), std::move(fn)); }
    void on_disconnect(std::function<void()> fn) override {
        asio::dispatch(m_connection->executor(), [c = m_connection, s = m_serial, f = std::move(fn)]() mutable {
            c->set_on_disconnect(s, std::move(f));
        });
    }

private:
    std::shared_ptr<Connection> m_connection;
    uint64_t m_serial;
};

std::shared_ptr<ResponseWriter> Connection::make_writer() {
    return std::make_shared<Writer>(shared_from_this(), m_serial);
}

}  // namespace

void HttpServer::Impl::do_accept() {
    acceptor.async_accept(asio::make_strand(ioc), [this](error_code ec, tcp::socket socket) {
        if (ec) {
            if (ec == asio::error::operation_aborted || !acceptor.is_open())
                return;
            // Out of file descriptors and the like: keep accepting, after a short pause.
            K2_WARN("accept failed: {}", ec.message());
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        } else {
            error_code ignored;
            socket.set_option(tcp::no_delay(true), ignored);
            std::make_shared<Connection>(std::move(socket), *this)->start();
        }
        do_accept();
    });
}

HttpServer::HttpServer(HttpServerOptions options, HttpHandler handler) : m_impl(std::make_unique<Impl>()) {
    m_impl->options = std::move(options);
    m_impl->handler = std::move(handler);
}

HttpServer::~HttpServer() {
    stop();
}

void HttpServer::start() {
    Impl& impl = *m_impl;
    error_code ec;
    const asio::ip::address address = asio::ip::make_address(impl.options.host, ec);
    K2_CHECK(!ec, "--host: '{}' is not an IP address ({})", impl.options.host, ec.message());
    const tcp::endpoint endpoint(address, static_cast<unsigned short>(impl.options.port));
    impl.acceptor.open(endpoint.protocol(), ec);
    K2_CHECK(!ec, "cannot open a socket: {}", ec.message());
    impl.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    impl.acceptor.bind(endpoint, ec);
    K2_CHECK(!ec, "cannot bind {}:{}: {}", impl.options.host, impl.options.port, ec.message());
    impl.acceptor.listen(asio::socket_base::max_listen_connections, ec);
    K2_CHECK(!ec, "cannot listen on {}:{}: {}", impl.options.host, impl.options.port, ec.message());
    impl.bound_port = impl.acceptor.local_endpoint().port();
    impl.work.emplace(impl.ioc.get_executor());
    impl.do_accept();
    for (int i = 0; i < std::max(1, impl.options.num_threads); ++i) {
        impl.threads.emplace_back([&impl] {
            // A handler that throws must not take the I/O thread (and the process) down.
            while (true) {
                try {
                    impl.ioc.run();
                    return;
                } catch (const std::exception& e) {
                    K2_ERROR("unhandled error on an HTTP thread: {}", e.what());
                }
            }
        });
    }
}

int HttpServer::port() const {
    return m_impl->bound_port;
}

void HttpServer::stop_accepting() {
    asio::post(m_impl->ioc, [impl = m_impl.get()] {
        error_code ignored;
        impl->acceptor.close(ignored);
    });
}

void HttpServer::stop() {
    if (m_impl->threads.empty())
        return;
    m_impl->work.reset();
    m_impl->ioc.stop();
    for (std::thread& thread : m_impl->threads)
        thread.join();
    m_impl->threads.clear();
}

size_t HttpServer::num_connections() const {
    return m_impl->num_connections.load();
}

}  // namespace k2::server

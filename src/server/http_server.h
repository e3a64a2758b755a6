// A small asynchronous HTTP/1.1 server (Asio sockets; the Boost.Beast parser behind http_request_parser.h):
// keep-alive, a body-size limit (413), a header-size limit (431), chunked streaming responses for SSE,
// and disconnect detection while a response is being produced (so the request can be aborted).
//
// Threading: a few I/O threads; each connection runs on its own strand. The handler is called on that
// strand and must not block (hand work to the engine and come back through ResponseWriter::post).
// Every ResponseWriter method is thread-safe (it hops onto the connection's strand).
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "server/http_request_parser.h"

namespace k2::server {

struct HttpResponse {
    int status = 200;
    std::string content_type = "application/json";
    std::string body;
    HttpHeaders headers;  // extra headers
};

std::string_view http_status_text(int status);

// The reply channel of one request: either send() once, or start_stream() + write()* + end().
class ResponseWriter {
public:
    virtual ~ResponseWriter() = default;
    virtual void send(HttpResponse response) = 0;
    virtual void start_stream(int status, std::string content_type, HttpHeaders headers = {}) = 0;
    virtual void write(std::string data) = 0;  // one chunk of a streaming response
    virtual void end() = 0;
    // Runs fn on the connection's strand (where the handler ran); use it to resume work from other threads.
    virtual void post(std::function<void()> fn) = 0;
    // fn runs once (on the strand) if the client disconnects before the response is complete.
    virtual void on_disconnect(std::function<void()> fn) = 0;
};

using HttpHandler = std::function<void(HttpRequest request, std::shared_ptr<ResponseWriter> writer)>;

struct HttpServerOptions {
    std::string host = "0.0.0.0";
    int port = 8000;  // 0: any free port (see HttpServer::port)
    int num_threads = 4;
    size_t max_body_bytes = 32u << 20;
    size_t max_header_bytes = 64u << 10;
};

class HttpServer {
public:
    HttpServer(HttpServerOptions options, HttpHandler handler);
    ~HttpServer();
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;

    void start();           // binds, listens and starts the I/O threads; throws k2::Error when binding fails
    int port() const;       // the bound port
    void stop_accepting();  // closes the listening socket; open connections continue
    void stop();            // stops the I/O threads (open connections are dropped)
    size_t num_connections() const;

    struct Impl;  // public only so that http_server.cpp's connection class can name it

private:
    std::unique_ptr<Impl> m_impl;
};

}  // namespace k2::server

// The HTTP/1.1 request parser of k2's server: Boost.Beast's parser behind an incremental feed() interface, so
// that the server (http_server.cpp) and the fuzz target (tests/fuzz/fuzz_http_request.cpp) run the same code.
// Beast is confined to http_request_parser.cpp (compile time on small machines matters).
//
// One parser reads one request; the server feeds it the bytes of a connection as they arrive and, after a
// complete request, reset()s it and feeds the bytes that follow (keep-alive, pipelining).
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace k2::server {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
    std::string method;  // "GET", "POST", ...
    std::string target;  // as sent, with the query string
    std::string path;    // target without the query string
    HttpHeaders headers;
    std::string body;
    std::string remote;  // "ip:port" of the client

    // Case-insensitive lookup; empty when absent.
    std::string header(std::string_view name) const;
};

struct HttpParseLimits {
    size_t max_body_bytes = 32u << 20;  // 413 above (content-length or the sum of the chunks)
    size_t max_header_bytes = 64u << 10;  // 431 above (request line + fields)
};

// Why a request cannot be read; the server answers `status` with `message` and closes the connection.
struct HttpParseError {
    int status = 400;  // 400, 413 or 431
    std::string message;
};

class HttpRequestParser {
public:
    explicit HttpRequestParser(HttpParseLimits limits);
    ~HttpRequestParser();
    HttpRequestParser(const HttpRequestParser&) = delete;
    HttpRequestParser& operator=(const HttpRequestParser&) = delete;

    // Parses what it can of `data` and returns the number of bytes it consumed. The caller keeps the rest and
    // passes it again with more bytes appended (an incomplete line is not consumed); after complete() the rest
    // belongs to the next request. Does nothing once complete() or failed(). What it leaves unconsumed never
    // exceeds the header limit (a longer header is a 431, a longer chunk-size line or trailer a 400), so the
    // caller's buffer stays bounded.
    size_t feed(std::string_view data);
    // The peer closed its side: a request cut short becomes an error (400).
    void feed_eof();

    bool got_some() const;     // any byte of this request parsed
    bool header_done() const;  // request line and fields parsed
    bool expects_continue() const;  // header_done() and "Expect: 100-continue"
    bool complete() const;
    bool failed() const { return m_error.has_value(); }
    const std::optional<HttpParseError>& error() const { return m_error; }
    // After complete(): whether the connection stays open after the answer (HTTP/1.1 default, Connection).
    bool keep_alive() const;
    // After complete(): the request, without `remote`. Call once.
    HttpRequest take_request();
    // Ready for the next request of the connection.
    void reset();

    struct Impl;

private:
    HttpParseLimits m_limits;
    std::unique_ptr<Impl> m_impl;
    std::optional<HttpParseError> m_error;
    size_t m_header_bytes = 0;  // of the current request, consumed so far
};

}  // namespace k2::server

// A small blocking HTTP/1.1 client over plain TCP for the benchmark: one connection per request
// ("Connection: close"), the body handed over as it arrives (chunked transfer decoded), so each SSE event
// can be time-stamped the moment its bytes are read. One thread per in-flight request.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace k2::bench {

struct Url {
    std::string host;
    uint16_t port = 80;
    std::string path = "/";

    // "http://host[:port][/path]"; throws k2::Error naming the URL otherwise (https is not supported).
    static Url parse(std::string_view text);
    std::string str() const;
};

struct HttpHead {
    int status = 0;
    std::string reason;
    std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased

    std::optional<std::string> header(std::string_view name) const;
};

struct HttpRequest {
    std::string method = "GET";
    Url url;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
    double timeout_s = 6 * 3600.0;  // per socket operation; vLLM's aiohttp total timeout is 6 h
};

// Receives the head once, then every piece of decoded body as soon as it is read (possibly empty pieces).
// Returning false stops reading: the caller has all it needs (an SSE stream after `data: [DONE]`).
using BodySink = std::function<bool(const HttpHead& head, std::string_view piece)>;

// Sends the request and streams the response into on_body until the body ends or on_body returns false.
// Throws k2::Error on connection, I/O or protocol errors. Returns the head.
HttpHead http_stream(const HttpRequest& request, const BodySink& on_body);

struct HttpResponse {
    HttpHead head;
    std::string body;
};

HttpResponse http_fetch(const HttpRequest& request);

}  // namespace k2::bench

// The only translation unit that includes Beast (compile time on small machines matters).
#include "server/http_request_parser.h"

#include <algorithm>
#include <boost/beast/http.hpp>
#include <cctype>
#include <cstdint>
#include <fmt/format.h>

namespace k2::server {

namespace beast = boost::beast;
namespace http = beast::http;

namespace {

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size())
        return false;
    for (size_t i = 0; i < a.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) {
            return false;
        }
    }
    return true;
}

}  // namespace

std::string HttpRequest::header(std::string_view name) const {
    for (const auto& [key, value] : headers) {
        if (iequals(key, name))
            return value;
    }
    return {};
}

struct HttpRequestParser::Impl {
    std::optional<http::request_parser<http::string_body>> parser;
};

HttpRequestParser::HttpRequestParser(HttpParseLimits limits) : m_limits(limits), m_impl(std::make_unique<Impl>()) {
    reset();
}

HttpRequestParser::~HttpRequestParser() = default;

void HttpRequestParser::reset() {
    m_error.reset();
    auto& parser = m_impl->parser.emplace();
    parser.body_limit(m_limits.max_body_bytes);
    parser.header_limit(static_cast<uint32_t>(std::min<size_t>(m_limits.max_header_bytes, UINT32_MAX)));
    // Not eager: put() returns once the header is parsed, so feed() can count the header's bytes exactly.
    parser.eager(false);
    m_header_bytes = 0;
}

namespace {

HttpParseError error_for(beast::error_code ec, const HttpParseLimits& limits) {
    if (ec == http::error::body_limit) {
        return {413, fmt::format("Request body is larger than the limit of {} bytes (--max-request-body-bytes).",
                                 limits.max_body_bytes)};
    }
    if (ec == http::error::header_limit)
        return {431, "Request headers are too large."};
    return {400, fmt::format("Malformed HTTP request: {}", ec.message())};
}

HttpParseError chunk_line_error(const HttpParseLimits& limits) {
    return {400, fmt::format("Malformed HTTP request: a chunk-size line or trailer longer than {} bytes.",
                             limits.max_header_bytes)};
}

}  // namespace

size_t HttpRequestParser::feed(std::string_view data) {
    auto& parser = *m_impl->parser;
    size_t used = 0;
    while (!m_error && !parser.is_done() && used < data.size()) {
        beast::error_code ec;
        const bool in_header = !parser.is_header_done();
        const size_t body_before = in_header ? 0 : parser.get().body().size();
        const size_t n = parser.put(boost::asio::const_buffer(data.data() + used, data.size() - used), ec);
        used += n;
        // Beast applies its header limit to the fields after the request line when they arrive in one read, but
        // to the whole header after a short read; counted here, the limit holds however the bytes arrive.
        if (in_header) {
            m_header_bytes += n;  // also when Beast took the request line and asks for more (need_more)
            if (m_header_bytes > m_limits.max_header_bytes)
                ec = http::error::header_limit;
        } else if (n - (parser.get().body().size() - body_before) > m_limits.max_header_bytes) {
            // A chunk-size line or the trailer, taken in one read, longer than the limit (see below).
            m_error = chunk_line_error(m_limits);
            break;
        }
        if (ec == http::error::need_more)
            break;  // an incomplete header or chunk header: the caller brings more bytes
        if (ec) {
            m_error = error_for(ec, m_limits);
            break;
        }
        if (n == 0)
            break;
    }
    // Beast limits the header, but not a chunk-size line (with its extensions) or the trailer after the last
    // chunk: it asks for more bytes until the line ends, and the caller would buffer a line that never ends
    // without bound (no chunk size is counted against the body limit yet). So nothing it leaves unconsumed may
    // exceed the header limit either; non-eager, put() takes one line or chunk at a time, so the same bound on
    // the non-body bytes of one put() above refuses the same lines when they come in one read.
    if (!m_error && !parser.is_done() && data.size() - used > m_limits.max_header_bytes) {
        m_error = parser.is_header_done() ? chunk_line_error(m_limits)
                                          : HttpParseError{431, "Request headers are too large."};
    }
    return used;
}

void HttpRequestParser::feed_eof() {
    auto& parser = *m_impl->parser;
    if (m_error || parser.is_done())
        return;
    beast::error_code ec;
    parser.put_eof(ec);
    if (ec) {
        m_error = error_for(ec, m_limits);
    } else if (!parser.is_done()) {
        m_error = HttpParseError{400, "Malformed HTTP request: partial message"};
    }
}

bool HttpRequestParser::got_some() const {
    return m_impl->parser->got_some();
}

bool HttpRequestParser::header_done() const {
    return m_impl->parser->is_header_done();
}

bool HttpRequestParser::expects_continue() const {
    const auto& parser = *m_impl->parser;
    if (!parser.is_header_done())
        return false;
    const beast::string_view expect = parser.get()[http::field::expect];
    return iequals(std::string_view(expect.data(), expect.size()), "100-continue");
}

bool HttpRequestParser::complete() const {
    return !m_error && m_impl->parser->is_done();
}

bool HttpRequestParser::keep_alive() const {
    return m_impl->parser->keep_alive();
}

HttpRequest HttpRequestParser::take_request() {
    http::request<http::string_body> message = m_impl->parser->release();
    HttpRequest request;
    request.method = std::string(message.method_string());
    request.target = std::string(message.target());
    request.path = request.target.substr(0, request.target.find('?'));
    for (const auto& field : message)
        request.headers.emplace_back(field.name_string(), field.value());
    request.body = std::move(message.body());
    return request;
}

}  // namespace k2::server

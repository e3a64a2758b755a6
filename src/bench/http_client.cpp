#include "bench/http_client.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>

#include "core/error.h"

namespace k2::bench {

namespace {

std::string lower(std::string_view text) {
    std::string out(text);
    std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
    return out;
}

// Owns a connected socket.
class Socket {
public:
    Socket(const Url& url, double timeout_s);
    ~Socket() {
        if (m_fd >= 0) {
            ::close(m_fd);
        }
    }
    Socket(const Socket&) = delete;
    Socket& operator=(const Socket&) = delete;

    void send_all(std::string_view data);
    size_t receive(char* buffer, size_t size);  // 0 at end of stream

private:
    int m_fd = -1;
    std::string m_where;
};

Socket::Socket(const Url& url, double timeout_s) : m_where(fmt::format("{}:{}", url.host, url.port)) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const std::string port = std::to_string(url.port);
    const int rc = ::getaddrinfo(url.host.c_str(), port.c_str(), &hints, &found);
    K2_CHECK(rc == 0, "cannot resolve {}: {}", m_where, ::gai_strerror(rc));
    int last_errno = 0;
    for (addrinfo* ai = found; ai != nullptr && m_fd < 0; ai = ai->ai_next) {
        m_fd = ::socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (m_fd >= 0 && ::connect(m_fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            last_errno = errno;
            ::close(m_fd);
            m_fd = -1;
        }
    }
    ::freeaddrinfo(found);
    K2_CHECK(m_fd >= 0, "cannot connect to {}: {}", m_where, std::strerror(last_errno));
    const int one = 1;
    ::setsockopt(m_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    timeval timeout{};
    timeout.tv_sec = static_cast<time_t>(timeout_s);
    timeout.tv_usec = static_cast<suseconds_t>((timeout_s - std::floor(timeout_s)) * 1e6);
    ::setsockopt(m_fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    ::setsockopt(m_fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
}

void Socket::send_all(std::string_view data) {
    while (!data.empty()) {
        const ssize_t sent = ::send(m_fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR) {
            continue;
        }
        K2_CHECK(sent > 0, "sending to {} failed: {}", m_where, std::strerror(errno));
        data.remove_prefix(static_cast<size_t>(sent));
    }
}

size_t Socket::receive(char* buffer, size_t size) {
    for (;;) {
        const ssize_t got = ::recv(m_fd, buffer, size, 0);
        if (got >= 0) {
            return static_cast<size_t>(got);
        }
        if (errno != EINTR) {
            K2_FAIL("reading from {} failed: {}", m_where,
                    errno == EAGAIN || errno == EWOULDBLOCK ? "timed out" : std::strerror(errno));
        }
    }
}

// Incremental decoder of Transfer-Encoding: chunked.
class ChunkedDecoder {
public:
    // Appends the decoded bytes of `in` to `out`; returns true once the last chunk has been read.
    bool feed(std::string_view in, std::string& out);

private:
    enum class State { kSize, kData, kDataEnd, kTrailer, kDone };
    State m_state = State::kSize;
    size_t m_remaining = 0;
    std::string m_line;
};

bool ChunkedDecoder::feed(std::string_view in, std::string& out) {
    size_t pos = 0;
    while (pos < in.size() && m_state != State::kDone) {
        if (m_state == State::kData) {
            const size_t take = std::min(m_remaining, in.size() - pos);
            out.append(in.substr(pos, take));
            pos += take;
            m_remaining -= take;
            if (m_remaining == 0) {
                m_state = State::kDataEnd;
            }
            continue;
        }
        // The other states read a CRLF-terminated line.
        const char c = in[pos++];
        if (c != '\n') {
            m_line.push_back(c);
            continue;
        }
        if (!m_line.empty() && m_line.back() == '\r') {
            m_line.pop_back();
        }
        if (m_state == State::kSize) {
            size_t size = 0;
            const std::string_view digits = std::string_view(m_line).substr(0, m_line.find(';'));
            const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), size, 16);
            K2_CHECK(ec == std::errc() && end != digits.data(), "bad chunk size line '{}'", m_line);
            m_remaining = size;
            m_state = size == 0 ? State::kTrailer : State::kData;
        } else if (m_state == State::kDataEnd) {
            K2_CHECK(m_line.empty(), "chunk data not followed by CRLF");
            m_state = State::kSize;
        } else if (m_state == State::kTrailer && m_line.empty()) {
            m_state = State::kDone;
        }
        m_line.clear();
    }
    return m_state == State::kDone;
}

HttpHead parse_head(std::string_view text) {
    HttpHead head;
    size_t line_end = text.find("\r\n");
    const std::string_view status_line = text.substr(0, line_end);
    // "HTTP/1.1 200 OK"
    const size_t sp1 = status_line.find(' ');
    K2_CHECK(sp1 != std::string_view::npos && status_line.starts_with("HTTP/"), "bad HTTP status line '{}'",
             status_line);
    const std::string_view rest = status_line.substr(sp1 + 1);
    const auto [end, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), head.status);
    K2_CHECK(ec == std::errc(), "bad HTTP status line '{}'", status_line);
    head.reason = std::string(end == rest.data() + rest.size() ? "" : std::string_view(end + 1, rest.data() + rest.size() - end - 1));
    while (line_end != std::string_view::npos && line_end + 2 < text.size()) {
        const size_t start = line_end + 2;
        line_end = text.find("\r\n", start);
        const std::string_view line = text.substr(start, line_end == std::string_view::npos ? line_end : line_end - start);
        const size_t colon = line.find(':');
        if (colon == std::string_view::npos) {
            continue;
        }
        std::string_view value = line.substr(colon + 1);
        while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) {
            value.remove_prefix(1);
        }
        while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) {
            value.remove_suffix(1);
        }
        head.headers.emplace_back(lower(line.substr(0, colon)), std::string(value));
    }
    return head;
}

std::string serialize(const HttpRequest& request) {
    std::string out = fmt::format("{} {} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nAccept: */*\r\n",
                                  request.method, request.url.path, request.url.host, request.url.port);
    for (const auto& [name, value] : request.headers) {
        out += fmt::format("{}: {}\r\n", name, value);
    }
    if (!request.body.empty() || request.method == "POST") {
        out += fmt::format("Content-Length: {}\r\n", request.body.size());
    }
    out += "\r\n";
    out += request.body;
    return out;
}

}  // namespace

Url Url::parse(std::string_view text) {
    constexpr std::string_view kScheme = "http://";
    K2_CHECK(text.starts_with(kScheme), "URL '{}' must start with http:// (https is not supported)", text);
    std::string_view rest = text.substr(kScheme.size());
    Url url;
    const size_t slash = rest.find('/');
    std::string_view authority = rest.substr(0, slash);
    url.path = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
    const size_t colon = authority.rfind(':');
    if (colon != std::string_view::npos && authority.find(']', colon) == std::string_view::npos) {
        const std::string_view port = authority.substr(colon + 1);
        const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), url.port);
        K2_CHECK(ec == std::errc() && end == port.data() + port.size(), "URL '{}': bad port '{}'", text, port);
        authority = authority.substr(0, colon);
    }
    if (authority.size() >= 2 && authority.front() == '[' && authority.back() == ']') {
        authority = authority.substr(1, authority.size() - 2);
    }
    K2_CHECK(!authority.empty(), "URL '{}' has no host", text);
    url.host = std::string(authority);
    return url;
}

std::string Url::str() const { return fmt::format("http://{}:{}{}", host, port, path); }

std::optional<std::string> HttpHead::header(std::string_view name) const {
    const std::string key = lower(name);
    for (const auto& [header_name, value] : headers) {
        if (header_name == key) {
            return value;
        }
    }
    return std::nullopt;
}

HttpHead http_stream(const HttpRequest& request, const BodySink& on_body) {
    Socket socket(request.url, request.timeout_s);
    socket.send_all(serialize(request));
    std::string buffer(64 * 1024, '\0');
    std::string pending;  // bytes before the end of the head
    HttpHead head;
    bool have_head = false;
    bool chunked = false;
    std::optional<size_t> content_left;
    ChunkedDecoder decoder;
    std::string piece;
    for (;;) {
        const size_t got = socket.receive(buffer.data(), buffer.size());
        if (got == 0) {
            K2_CHECK(have_head, "{}: connection closed before a response", request.url.str());
            K2_CHECK(!chunked && !content_left.value_or(0), "{}: connection closed in the middle of the body",
                     request.url.str());
            return head;
        }
        std::string_view data(buffer.data(), got);
        if (!have_head) {
            pending.append(data);
            const size_t end = pending.find("\r\n\r\n");
            if (end == std::string::npos) {
                continue;
            }
            head = parse_head(std::string_view(pending).substr(0, end));
            have_head = true;
            chunked = lower(head.header("transfer-encoding").value_or("")).find("chunked") != std::string::npos;
            if (const auto length = head.header("content-length"); length && !chunked) {
                content_left = std::stoull(*length);
            }
            if (!on_body(head, {})) {
                return head;
            }
            data = std::string_view(pending).substr(end + 4);
        }
        piece.clear();
        bool done = false;
        if (chunked) {
            done = decoder.feed(data, piece);
        } else {
            const size_t take = content_left ? std::min(*content_left, data.size()) : data.size();
            piece.assign(data.substr(0, take));
            if (content_left) {
                *content_left -= take;
                done = *content_left == 0;
            }
        }
        if (!piece.empty() && !on_body(head, piece)) {
            return head;
        }
        if (done) {
            return head;
        }
    }
}

HttpResponse http_fetch(const HttpRequest& request) {
    HttpResponse response;
    response.head = http_stream(request, [&](const HttpHead&, std::string_view piece) {
        response.body.append(piece);
        return true;
    });
    return response;
}

}  // namespace k2::bench

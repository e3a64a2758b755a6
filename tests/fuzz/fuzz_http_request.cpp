// libFuzzer target: the raw HTTP layer, i.e. the bytes a client sends on one connection, through
// HttpRequestParser exactly as http_server.cpp drives it: feed what arrived, take a complete request, reset for
// the next one while the connection is kept alive (pipelining), feed_eof() when the stream ends mid-request.
// Input: byte 0 = flags (bit 0: small limits, 1 KiB of header and 4 KiB of body, so that 431 and 413 are
// reachable with short inputs; else the server's defaults), byte 1 = the seed of the split of the rest into
// network reads (1..64 bytes, or single bytes when bit 7 is set), then the stream.
// Checks: no crash; only 400/413/431 errors; no body above the limit; the bytes the parser leaves unconsumed
// (which the server buffers) stay within the header limit; a request's path is its target up to '?'; and the
// same stream read in one piece gives the same requests and also ends in an error when the split one does (the
// parser must not depend on where the network cut the bytes). Which error may differ: Beast checks the lines
// of a header or chunk as soon as one read holds them, but after a short read it waits for the end of the
// header or line first, so a bad line that never ends is a 400 "bad field" in one piece and a 400 "partial
// message", a 431 or a 413 in pieces; each refuses the request and closes. A violation aborts, so libFuzzer
// reports it with the input.
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "server/http_request_parser.h"

namespace {

using k2::server::HttpParseError;
using k2::server::HttpParseLimits;
using k2::server::HttpRequest;
using k2::server::HttpRequestParser;

void require(bool ok, const char* what, std::string_view stream) {
    if (!ok) {
        std::fprintf(stderr, "fuzz_http_request: violated: %s\nstream (%zu bytes): %.*s\n", what, stream.size(),
                     static_cast<int>(stream.size()), stream.data());
        std::abort();
    }
}

struct Parsed {
    HttpRequest request;
    bool keep_alive = false;
};

struct Outcome {
    std::vector<Parsed> requests;
    std::optional<HttpParseError> error;
};

// Network reads of the stream: sizes 1..64 from a xorshift seeded by `seed` (all 1 when bit 7 is set), or the
// whole stream at once when `seed` is empty.
class Reads {
public:
    explicit Reads(std::optional<uint8_t> seed) : m_seed(seed), m_state(0x9e3779b9u ^ seed.value_or(0)) {}
    size_t next(size_t left) {
        if (!m_seed)
            return left;
        if (*m_seed & 0x80)
            return 1;
        m_state ^= m_state << 13;
        m_state ^= m_state >> 17;
        m_state ^= m_state << 5;
        return std::min<size_t>(left, 1 + m_state % 64);
    }

private:
    std::optional<uint8_t> m_seed;
    uint32_t m_state;
};

// The read loop of http_server.cpp's Connection (read_request / parse_input / on_read / on_request).
Outcome serve(std::string_view stream, const HttpParseLimits& limits, Reads reads) {
    Outcome out;
    HttpRequestParser parser(limits);
    std::string input;
    size_t pos = 0;
    while (true) {
        input.erase(0, parser.feed(input));
        require(!parser.expects_continue() || parser.header_done(), "100-continue only after the header", stream);
        require(parser.failed() || parser.complete() || input.size() <= limits.max_header_bytes,
                "the unconsumed bytes stay within the header limit (the server buffers them)", stream);
        if (parser.failed()) {
            out.error = parser.error();
            return out;
        }
        if (parser.complete()) {
            const bool keep_alive = parser.keep_alive();
            out.requests.push_back({parser.take_request(), keep_alive});
            if (!keep_alive)
                return out;  // the server answers and closes; what follows is dropped
            parser.reset();
            continue;
        }
        if (pos == stream.size()) {
            if (parser.got_some()) {
                parser.feed(input);
                parser.feed_eof();
                require(parser.failed(), "a request cut short is an error", stream);
                out.error = parser.error();
            }
            return out;
        }
        const size_t n = reads.next(stream.size() - pos);
        input.append(stream.substr(pos, n));
        pos += n;
    }
}

void check_outcome(const Outcome& out, const HttpParseLimits& limits, std::string_view stream) {
    if (out.error) {
        const int status = out.error->status;
        require(status == 400 || status == 413 || status == 431, "errors are 400, 413 or 431", stream);
        require(!out.error->message.empty(), "an error has a message", stream);
    }
    for (const Parsed& parsed : out.requests) {
        const HttpRequest& request = parsed.request;
        require(request.body.size() <= limits.max_body_bytes, "body within the limit", stream);
        require(!request.method.empty(), "a method", stream);
        require(request.target.compare(0, request.path.size(), request.path) == 0 &&
                    request.path.find('?') == std::string::npos,
                "path is the target up to '?'", stream);
        // What the routes ask for: the case-insensitive lookup returns the first such field of the list.
        std::string first_content_type;
        for (const auto& [name, value] : request.headers) {
            std::string lower = name;
            for (char& c : lower)
                c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            if (lower == "content-type") {
                first_content_type = value;
                break;
            }
        }
        require(request.header("Content-Type") == first_content_type, "header() finds the first listed field",
                stream);
    }
}

bool same(const Outcome& a, const Outcome& b) {
    if (a.requests.size() != b.requests.size() || a.error.has_value() != b.error.has_value())
        return false;
    for (size_t i = 0; i < a.requests.size(); ++i) {
        const HttpRequest& x = a.requests[i].request;
        const HttpRequest& y = b.requests[i].request;
        if (a.requests[i].keep_alive != b.requests[i].keep_alive || x.method != y.method || x.target != y.target ||
            x.path != y.path || x.headers != y.headers || x.body != y.body) {
            return false;
        }
    }
    return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 2)
        return 0;
    HttpParseLimits limits;  // the server's defaults (HttpServerOptions)
    if (data[0] & 1) {
        limits.max_header_bytes = 1024;
        limits.max_body_bytes = 4096;
    }
    const std::string_view stream(reinterpret_cast<const char*>(data) + 2, size - 2);
    const Outcome split = serve(stream, limits, Reads(data[1]));
    check_outcome(split, limits, stream);
    const Outcome whole = serve(stream, limits, Reads(std::nullopt));
    require(same(split, whole), "the same requests, and an error in both or neither, whatever the reads", stream);
    return 0;
}

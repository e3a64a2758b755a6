// HttpRequestParser (the server's request reader) against the HTTP/1.1 rules of RFC 9112: chunked bodies with
// extensions and trailers (§7.1), pipelining and persistence (§9.3), HTTP/1.0 defaults, and k2's limits.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "server/http_request_parser.h"

namespace k2::server {
namespace {

struct Result {
    std::vector<HttpRequest> requests;
    std::vector<bool> keep_alive;
    int error_status = 0;
};

// Feeds `stream` in reads of `step` bytes the way http_server.cpp does, taking requests while kept alive.
Result parse(const std::string& stream, size_t step, HttpParseLimits limits = {}) {
    Result out;
    HttpRequestParser parser(limits);
    std::string input;
    size_t pos = 0;
    while (true) {
        input.erase(0, parser.feed(input));
        if (parser.failed()) {
            out.error_status = parser.error()->status;
            return out;
        }
        if (parser.complete()) {
            out.keep_alive.push_back(parser.keep_alive());
            out.requests.push_back(parser.take_request());
            if (!out.keep_alive.back())
                return out;
            parser.reset();
            continue;
        }
        if (pos == stream.size()) {
            if (parser.got_some()) {
                parser.feed_eof();
                out.error_status = parser.failed() ? parser.error()->status : -1;
            }
            return out;
        }
        input += stream.substr(pos, step);
        pos += std::min(step, stream.size() - pos);
    }
}

TEST(HttpRequestParser, ChunkedBodyWithExtensionsAndTrailerIsReassembled) {
    // RFC 9112 §7.1's chunk grammar: a chunk-ext after the size, a trailer field after the last chunk.
    const std::string stream =
        "POST /tokenize?x=1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: Expires\r\n\r\n"
        "1a; ignore-stuff-here\r\nabcdefghijklmnopqrstuvwxyz\r\n10;name=\"v\"\r\n1234567890abcdef\r\n0\r\n"
        "Expires: Sat, 27 Mar 2004 21:12:00 GMT\r\n\r\n";
    for (size_t step : {size_t{1}, size_t{7}, stream.size()}) {
        const Result r = parse(stream, step);
        ASSERT_EQ(r.error_status, 0) << step;
        ASSERT_EQ(r.requests.size(), 1u);
        EXPECT_EQ(r.requests[0].method, "POST");
        EXPECT_EQ(r.requests[0].target, "/tokenize?x=1");
        EXPECT_EQ(r.requests[0].path, "/tokenize");
        EXPECT_EQ(r.requests[0].body, "abcdefghijklmnopqrstuvwxyz1234567890abcdef");
        EXPECT_EQ(r.requests[0].header("host"), "a");
    }
}

TEST(HttpRequestParser, PipelinedRequestsAreReadInOrderUntilConnectionClose) {
    const std::string stream =
        "GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
        "POST /tokenize HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
        "GET /v1/models HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        "GET /after-close HTTP/1.1\r\n\r\n";
    for (size_t step : {size_t{1}, size_t{13}, stream.size()}) {
        const Result r = parse(stream, step);
        ASSERT_EQ(r.requests.size(), 3u) << step;
        EXPECT_EQ(r.requests[0].path, "/health");
        EXPECT_EQ(r.requests[1].body, "hello");
        EXPECT_EQ(r.requests[2].path, "/v1/models");
        EXPECT_EQ(r.keep_alive, (std::vector<bool>{true, true, false}));
    }
}

TEST(HttpRequestParser, Http10ClosesUnlessKeepAliveIsAsked) {
    EXPECT_EQ(parse("GET / HTTP/1.0\r\n\r\n", 4).keep_alive, std::vector<bool>{false});
    EXPECT_EQ(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 4).keep_alive, std::vector<bool>{true});
}

TEST(HttpRequestParser, LimitsAnswer413And431) {
    const HttpParseLimits small{/*max_body_bytes=*/16, /*max_header_bytes=*/64};
    EXPECT_EQ(parse("POST / HTTP/1.1\r\nContent-Length: 17\r\n\r\n", 5, small).error_status, 413);
    // Chunked: the limit is on the sum of the chunks.
    EXPECT_EQ(parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n123456789\r\n9\r\n123456789\r\n0\r\n\r\n",
                    5, small)
                  .error_status,
              413);
    EXPECT_EQ(parse("GET / HTTP/1.1\r\nCookie: " + std::string(100, 'a') + "\r\n\r\n", 5, small).error_status, 431);
    EXPECT_EQ(parse("POST / HTTP/1.1\r\nContent-Length: 16\r\n\r\n0123456789abcdef", 5, small).requests.size(), 1u);
}

TEST(HttpRequestParser, MalformedAndCutShortRequestsAre400) {
    EXPECT_EQ(parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 3).error_status,
              400);
    EXPECT_EQ(parse("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde", 3).error_status, 400);
    EXPECT_EQ(parse("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", 3).error_status, 400);
    EXPECT_EQ(parse("NOT HTTP AT ALL\r\n\r\n", 3).error_status, 400);
}

TEST(HttpRequestParser, ChunkLineOrTrailerThatNeverEndsIsRefusedAtTheHeaderLimit) {
    // Beast itself waits for the end of these lines however long they get; the server must not buffer that.
    const HttpParseLimits small{/*max_body_bytes=*/1 << 20, /*max_header_bytes=*/256};
    const std::string head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (const std::string& rest : {"3" + std::string(1000, ' '), "3;" + std::string(1000, 'a'),
                                    "3;a=\"v\r\n" + std::string(1000, 'x'), "3\r\nabc\r\n0\r\nX: " + std::string(1000, 'a')}) {
        HttpRequestParser parser(small);
        std::string input;
        for (char c : head + rest) {
            input += c;
            input.erase(0, parser.feed(input));
            if (parser.failed())
                break;
            ASSERT_LE(input.size(), small.max_header_bytes);
        }
        ASSERT_TRUE(parser.failed()) << rest.substr(0, 12);
        EXPECT_EQ(parser.error()->status, 400);
    }
}

TEST(HttpRequestParser, LongChunkLinesAreRefusedInOneReadTooButManySmallChunksAreFine) {
    const HttpParseLimits small{/*max_body_bytes=*/1 << 20, /*max_header_bytes=*/256};
    const std::string head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    std::string chunks;
    for (int i = 0; i < 2000; ++i)
        chunks += "1\r\na\r\n";
    const Result many = parse(head + chunks + "0\r\n\r\n", 1 << 20, small);
    ASSERT_EQ(many.requests.size(), 1u);
    EXPECT_EQ(many.requests[0].body, std::string(2000, 'a'));
    const std::string trailer = "3\r\nabc\r\n0\r\nX: " + std::string(1000, 'a') + "\r\n\r\n";
    EXPECT_EQ(parse(head + trailer, 1 << 20, small).error_status, 400);  // one read
    EXPECT_EQ(parse(head + trailer, 7, small).error_status, 400);        // many
}

TEST(HttpRequestParser, ExpectContinueIsSeenOnceTheHeaderIsDone) {
    HttpRequestParser parser({});
    std::string input = "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n";
    input.erase(0, parser.feed(input));  // the header is not complete yet
    EXPECT_FALSE(parser.header_done());
    EXPECT_FALSE(parser.expects_continue());
    input += "\r\n";
    input.erase(0, parser.feed(input));
    EXPECT_TRUE(input.empty());
    EXPECT_TRUE(parser.expects_continue());
    EXPECT_FALSE(parser.complete());
    EXPECT_EQ(parser.feed("{}"), 2u);
    EXPECT_TRUE(parser.complete());
}

}  // namespace
}  // namespace k2::server

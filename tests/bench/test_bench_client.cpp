// The benchmark's HTTP/SSE client against an in-process socket server that writes a chunked SSE response in
// deliberately awkward pieces (split inside chunk headers, events and CRLFs), with known pauses between events.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "bench/request_func.h"
#include "core/error.h"

namespace k2::bench {
namespace {

TEST(BenchSse, SplitsEventsAndSkipsComments) {
    SseParser parser;
    std::vector<std::string> events = parser.feed(": ping\n\ndata: {\"a\":1}\n\nda");
    EXPECT_EQ(events, (std::vector<std::string>{"{\"a\":1}"}));
    events = parser.feed("ta: x\r\ndata:y\r\n\r\nevent: e\ndata: [DONE]\n");
    EXPECT_EQ(events, (std::vector<std::string>{"x\ny"}));
    EXPECT_EQ(parser.finish(), (std::vector<std::string>{"[DONE]"}));
}

TEST(BenchUrl, Parse) {
    const Url url = Url::parse("http://localhost:8123/v1/completions");
    EXPECT_EQ(url.host, "localhost");
    EXPECT_EQ(url.port, 8123);
    EXPECT_EQ(url.path, "/v1/completions");
    EXPECT_EQ(Url::parse("http://h").path, "/");
    EXPECT_EQ(Url::parse("http://h").port, 80);
    EXPECT_THROW(Url::parse("https://h/v1"), k2::Error);
    EXPECT_THROW(Url::parse("http://h:99999/"), k2::Error);
}

TEST(BenchPayload, CompletionsAndChatShapes) {
    RequestInput input;
    input.model = "m";
    input.prompt = "hello";
    input.output_len = 7;
    input.ignore_eos = true;
    input.extra_body = {{"temperature", 0.0}};
    const nlohmann::json completions = build_payload(input, Backend::kCompletions);
    EXPECT_EQ(completions["prompt"], "hello");
    EXPECT_EQ(completions["max_tokens"], 7);
    EXPECT_EQ(completions["stream"], true);
    EXPECT_EQ(completions["stream_options"]["include_usage"], true);
    EXPECT_EQ(completions["ignore_eos"], true);
    EXPECT_EQ(completions["temperature"], 0.0);
    const nlohmann::json chat = build_payload(input, Backend::kChat);
    EXPECT_EQ(chat["messages"][0]["content"][0]["text"], "hello");
    EXPECT_EQ(chat["max_completion_tokens"], 7);
    EXPECT_FALSE(chat.contains("prompt"));
}

// Serves one connection: reads the request head, then writes `pieces` with `pause_ms` between them.
class OneShotServer {
public:
    OneShotServer(std::vector<std::string> pieces, int pause_ms) {
        m_fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        EXPECT_EQ(::bind(m_fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
        EXPECT_EQ(::listen(m_fd, 1), 0);
        socklen_t len = sizeof(addr);
        ::getsockname(m_fd, reinterpret_cast<sockaddr*>(&addr), &len);
        m_port = ntohs(addr.sin_port);
        m_thread = std::thread([this, pieces = std::move(pieces), pause_ms] {
            const int conn = ::accept(m_fd, nullptr, nullptr);
            std::string request;
            char buf[4096];
            while (request.find("\r\n\r\n") == std::string::npos) {
                const ssize_t got = ::recv(conn, buf, sizeof(buf), 0);
                if (got <= 0) break;
                request.append(buf, static_cast<size_t>(got));
            }
            m_request = request;
            for (const std::string& piece : pieces) {
                ::send(conn, piece.data(), piece.size(), MSG_NOSIGNAL);
                std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
            }
            ::close(conn);
        });
    }
    ~OneShotServer() {
        m_thread.join();
        ::close(m_fd);
    }
    uint16_t port() const { return m_port; }
    const std::string& request() const { return m_request; }

private:
    int m_fd = -1;
    uint16_t m_port = 0;
    std::thread m_thread;
    std::string m_request;
};

std::string chunk(const std::string& data) { return fmt::format("{:x}\r\n{}\r\n", data.size(), data); }

TEST(BenchRequest, StreamsChunkedSseAndMeasuresGaps) {
    const std::string e1 = "data: {\"choices\":[{\"index\":0,\"text\":\"Hel\"}]}\n\n";
    const std::string e2 = "data: {\"choices\":[{\"index\":0,\"text\":\"lo\"}]}\n\n";
    const std::string e3 = "data: {\"choices\":[{\"index\":0,\"text\":\"\"}]}\n\n";
    const std::string usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3}}\n\n";
    const std::string c2 = chunk(e2);
    // Pieces split the chunk framing and the events themselves; the pause is 50 ms between pieces.
    OneShotServer server({"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" +
                              chunk(e1),
                          c2.substr(0, 3), c2.substr(3) + chunk(e3).substr(0, 10),
                          chunk(e3).substr(10) + chunk(usage) + chunk("data: [DONE]\n\n") + "0\r\n\r\n"},
                         50);
    RequestInput input;
    input.url = Url::parse(fmt::format("http://127.0.0.1:{}/v1/completions", server.port()));
    input.model = "tiny";
    input.prompt = "p";
    input.prompt_len = 5;
    input.output_len = 3;
    input.request_id = "r-1";
    input.api_key = "sk-test";
    const RequestOutput out = send_request(input, Backend::kCompletions, Clock::now());
    ASSERT_TRUE(out.success) << out.error;
    EXPECT_EQ(out.generated_text, "Hello");
    EXPECT_EQ(out.output_tokens, 3);
    EXPECT_EQ(out.prompt_len, 12);  // from usage, as newer vLLM does
    ASSERT_EQ(out.itl.size(), 2u);
    // e2 completes in the third piece (two 50 ms pauses after e1), e3 in the fourth (one more pause). Sleeps
    // only ever run long, so the bounds are wide above and tight below (a busy CI machine).
    EXPECT_GT(out.itl[0], 0.080);
    EXPECT_LT(out.itl[0], 0.600);
    EXPECT_GT(out.itl[1], 0.030);
    EXPECT_LT(out.itl[1], 0.500);
    EXPECT_NEAR(out.latency, out.ttft + out.itl[0] + out.itl[1], 1e-9);
    EXPECT_NE(server.request().find("Authorization: Bearer sk-test"), std::string::npos);
    EXPECT_NE(server.request().find("x-request-id: r-1"), std::string::npos);
}

TEST(BenchRequest, DoneEndsTheRequestWithoutWaitingForTheBodyEnd) {
    // The server sends [DONE] but holds the body open for another 800 ms: the request completes at [DONE].
    const std::string e1 = "data: {\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\n";
    OneShotServer server({"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(e1) + chunk("data: [DONE]\n\n"),
                          "0\r\n\r\n"},
                         800);
    RequestInput input;
    input.url = Url::parse(fmt::format("http://127.0.0.1:{}/v1/completions", server.port()));
    const Clock::time_point start = Clock::now();
    const RequestOutput out = send_request(input, Backend::kCompletions, start);
    EXPECT_TRUE(out.success) << out.error;
    EXPECT_LT(std::chrono::duration<double>(Clock::now() - start).count(), 0.5);
}

TEST(BenchRequest, HttpErrorIsAFailureWithItsMessage) {
    const std::string body = R"({"error":{"message":"too long","type":"BadRequestError","code":400}})";
    OneShotServer server({fmt::format("HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{}", body.size(), body)},
                         0);
    RequestInput input;
    input.url = Url::parse(fmt::format("http://127.0.0.1:{}/v1/chat/completions", server.port()));
    const RequestOutput out = send_request(input, Backend::kChat, Clock::now());
    EXPECT_FALSE(out.success);
    EXPECT_NE(out.error.find("400"), std::string::npos) << out.error;
    EXPECT_NE(out.error.find("too long"), std::string::npos) << out.error;
}

TEST(BenchRequest, StreamWithoutTokensFails) {
    OneShotServer server({"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\ndata: [DONE]\n\n"}, 0);
    RequestInput input;
    input.url = Url::parse(fmt::format("http://127.0.0.1:{}/v1/completions", server.port()));
    const RequestOutput out = send_request(input, Backend::kCompletions, Clock::now());
    EXPECT_FALSE(out.success);
    EXPECT_NE(out.error.find("Never received a valid chunk"), std::string::npos) << out.error;
}

TEST(BenchRequest, ConnectionRefusedIsAFailure) {
    RequestInput input;
    input.url = Url::parse("http://127.0.0.1:1/v1/completions");
    const RequestOutput out = send_request(input, Backend::kCompletions, Clock::now());
    EXPECT_FALSE(out.success);
    EXPECT_NE(out.error.find("cannot connect"), std::string::npos) << out.error;
}

}  // namespace
}  // namespace k2::bench

// The built-in chat page: the elements the page needs, no external assets, only same-origin /v1/ URLs in its
// script, and the route in OpenAiServer (served without the API key, off with enable_web_ui = false, never
// under /v1).
#include <gtest/gtest.h>

#include <regex>
#include <string>
#include <vector>

#include "server/openai_server.h"
#include "server/web_chat.h"

namespace k2::server {
namespace {

std::string page() {
    return std::string(web_chat_html());
}

std::string script() {
    const std::string html = page();
    const size_t begin = html.find("<script>");
    const size_t end = html.find("</script>");
    EXPECT_NE(begin, std::string::npos);
    EXPECT_NE(end, std::string::npos);
    return html.substr(begin + 8, end - begin - 8);
}

TEST(WebChat, PageHasTheControls) {
    const std::string html = page();
    EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
    for (const char* needle :
         {"<select id=\"model\"", "id=\"api-key\"", "id=\"system\"", "id=\"temperature\"", "id=\"max-tokens\"",
          "id=\"prompt\"", "id=\"send\"", "id=\"stop\"", "id=\"messages\"", "id=\"tools\""}) {
        EXPECT_NE(html.find(needle), std::string::npos) << needle;
    }
    const std::string js = script();
    for (const char* needle : {"\"/v1/models\"", "\"/v1/chat/completions\"", "stream: true", "new AbortController()",
                               "controller.abort()", "\"Bearer \"", "tool_calls", "getReader()"}) {
        EXPECT_NE(js.find(needle), std::string::npos) << needle;
    }
}

TEST(WebChat, NoExternalAssets) {
    const std::string html = page();
    for (const char* needle : {"<link", "src=", "href=", "@import", "url(", "http://", "https://", "<iframe"}) {
        EXPECT_EQ(html.find(needle), std::string::npos) << needle;
    }
    EXPECT_EQ(html.find("<script"), html.rfind("<script")) << "one inline script only";
}

TEST(WebChat, ScriptOnlyUsesSameOriginApiPaths) {
    const std::string js = script();
    // Every string literal that looks like a URL or path must be a relative /v1/ path.
    const std::regex literal(R"re("([^"\\\n]*)"|'([^'\\\n]*)'|`([^`\\]*)`)re");
    std::vector<std::string> paths;
    for (auto it = std::sregex_iterator(js.begin(), js.end(), literal); it != std::sregex_iterator(); ++it) {
        const std::string text = (*it)[1].matched ? (*it)[1].str() : (*it)[2].matched ? (*it)[2].str() : (*it)[3].str();
        EXPECT_EQ(text.find("://"), std::string::npos) << text;
        if (!text.empty() && text[0] == '/') {
            EXPECT_EQ(text.rfind("/v1/", 0), 0u) << text;
            paths.push_back(text);
        }
    }
    EXPECT_EQ(paths, (std::vector<std::string>{"/v1/models", "/v1/chat/completions"}));
    // Each fetch goes to the caller's origin ("" in the page) plus one of those paths.
    const std::regex fetch_call(R"re(fetch\(([^,)]*))re");
    int num_fetches = 0;
    for (auto it = std::sregex_iterator(js.begin(), js.end(), fetch_call); it != std::sregex_iterator(); ++it) {
        EXPECT_EQ((*it)[1].str().rfind("origin + \"/v1/", 0), 0u) << (*it)[1].str();
        ++num_fetches;
    }
    EXPECT_EQ(num_fetches, 2);
    EXPECT_NE(js.find("listModels(\"\","), std::string::npos);
    EXPECT_NE(js.find("streamChat(\"\","), std::string::npos);
}

// Records what the handler sent.
class RecordingWriter : public ResponseWriter {
public:
    void send(HttpResponse r) override { response = std::move(r); }
    void start_stream(int, std::string, HttpHeaders) override { ADD_FAILURE() << "unexpected stream"; }
    void write(std::string) override {}
    void end() override {}
    void post(std::function<void()> fn) override { fn(); }
    void on_disconnect(std::function<void()>) override {}
    HttpResponse response{0, "", "", {}};
};

HttpResponse get(OpenAiServer& server, const std::string& path, const std::string& method = "GET") {
    auto writer = std::make_shared<RecordingWriter>();
    HttpRequest request;
    request.method = method;
    request.target = path;
    request.path = path;
    server.handle(request, writer);
    return writer->response;
}

OpenAiServerConfig config_with_key(bool web_ui) {
    OpenAiServerConfig config;
    config.served_model_names = {"m"};
    config.api_keys = {"secret"};
    config.enable_web_ui = web_ui;
    return config;
}

TEST(WebChat, RouteServesThePageWithoutTheKey) {
    auto server = std::make_shared<OpenAiServer>(config_with_key(true));
    for (const char* path : {"/", "/chat"}) {
        const HttpResponse r = get(*server, path);
        EXPECT_EQ(r.status, 200) << path;
        EXPECT_EQ(r.content_type.rfind("text/html", 0), 0u) << r.content_type;
        EXPECT_EQ(r.body, page());
    }
    // The API itself still needs the key, and the page is not under /v1.
    EXPECT_EQ(get(*server, "/v1/models").status, 401);
    EXPECT_EQ(get(*server, "/v1/").status, 401);
    EXPECT_EQ(get(*server, "/v1/chat").status, 401);
    EXPECT_EQ(get(*server, "/", "POST").status, 401);
}

TEST(WebChat, DisabledPageIsNotServed) {
    auto keyed = std::make_shared<OpenAiServer>(config_with_key(false));
    EXPECT_EQ(get(*keyed, "/").status, 401);
    OpenAiServerConfig open;
    open.served_model_names = {"m"};
    open.enable_web_ui = false;
    auto server = std::make_shared<OpenAiServer>(open);
    EXPECT_EQ(get(*server, "/").status, 404);
    EXPECT_EQ(get(*server, "/chat").status, 404);
}

}  // namespace
}  // namespace k2::server

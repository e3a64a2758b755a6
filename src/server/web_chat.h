// The built-in web chat page (`GET /` and `/chat` on `k2 serve`, off with --disable-web-ui): one
// self-contained HTML document (inline CSS and JS, no external assets) that talks to the server only as an
// ordinary API client would: same-origin fetches of /v1/models and streaming /v1/chat/completions, with the
// user's API key as a Bearer token. The page itself carries no secret, so it is served without the key.
#pragma once

#include <string_view>

#include "server/http_server.h"

namespace k2::server {

// True for the paths the page is served at ("/" and "/chat").
bool is_web_chat_path(std::string_view path);

// The whole page.
std::string_view web_chat_html();

// 200 text/html with the page.
HttpResponse web_chat_response();

}  // namespace k2::server

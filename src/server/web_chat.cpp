#include "server/web_chat.h"

namespace k2::server {

namespace {

// The page. Its script keeps the network part (authHeaders .. streamChat) free of DOM access so that the
// tests can run it under node against a live server; the DOM part only starts when a document exists.
// Every URL it fetches is a same-origin relative /v1/ path: the page gets no privileges a client lacks.
constexpr std::string_view kPage = R"K2HTML(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>k2 chat</title>
<style>
  :root { --bg: #f7f7f8; --fg: #1d1d1f; --muted: #6e6e73; --line: #d9d9de; --accent: #2f6fde; --user: #e8effc;
          --tool: #fff6e0; --error: #b3261e; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; background: var(--bg);
         color: var(--fg); display: flex; height: 100vh; }
  aside { width: 290px; padding: 14px; border-right: 1px solid var(--line); overflow-y: auto; background: #fff; }
  aside h1 { font-size: 18px; margin: 0 0 12px; }
  aside label { display: block; font-size: 12px; color: var(--muted); margin: 10px 0 3px; }
  aside input, aside select, aside textarea { width: 100%; font: inherit; font-size: 13px; padding: 5px 6px;
         border: 1px solid var(--line); border-radius: 6px; background: #fff; }
  aside textarea { resize: vertical; min-height: 60px; font-family: ui-monospace, monospace; }
  main { flex: 1; display: flex; flex-direction: column; min-width: 0; }
  #messages { flex: 1; overflow-y: auto; padding: 18px; }
  .msg { max-width: 860px; margin: 0 auto 14px; padding: 10px 12px; border-radius: 8px; background: #fff;
         border: 1px solid var(--line); white-space: pre-wrap; word-wrap: break-word; }
  .msg.user { background: var(--user); }
  .msg .role { font-size: 11px; text-transform: uppercase; color: var(--muted); margin-bottom: 4px; }
  .msg .reasoning { color: var(--muted); font-style: italic; }
  .msg .meta { font-size: 11px; color: var(--muted); margin-top: 6px; }
  .msg.error { border-color: var(--error); color: var(--error); }
  .tool-call { background: var(--tool); border: 1px solid #e8d49a; border-radius: 6px; padding: 6px 8px;
         margin-top: 6px; font-family: ui-monospace, monospace; font-size: 13px; }
  form { display: flex; gap: 8px; padding: 12px 18px; border-top: 1px solid var(--line); background: #fff; }
  form textarea { flex: 1; font: inherit; padding: 8px; border: 1px solid var(--line); border-radius: 8px;
         resize: none; height: 64px; }
  button { font: inherit; padding: 6px 14px; border-radius: 8px; border: 1px solid var(--accent); cursor: pointer;
         background: var(--accent); color: #fff; }
  button.secondary { background: #fff; color: var(--accent); }
  button:disabled { opacity: .45; cursor: default; }
  #status { font-size: 12px; color: var(--muted); margin-top: 12px; white-space: pre-wrap; }
</style>
</head>
<body>
<aside>
  <h1>k2 chat</h1>
  <label for="model">Model</label>
  <select id="model"></select>
  <label for="api-key">API key (sent as Authorization: Bearer)</label>
  <input id="api-key" type="password" autocomplete="off" placeholder="only if the server has --api-key">
  <label for="system">System prompt</label>
  <textarea id="system" placeholder="optional"></textarea>
  <label for="temperature">Temperature</label>
  <input id="temperature" type="number" min="0" max="2" step="0.1" value="0.6">
  <label for="max-tokens">Max tokens</label>
  <input id="max-tokens" type="number" min="1" step="1" value="512">
  <label for="tools">Tools (JSON list of OpenAI tool definitions, optional)</label>
  <textarea id="tools"
            placeholder='[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]'></textarea>
  <p><button id="reload" class="secondary" type="button">Reload models</button>
     <button id="clear" class="secondary" type="button">Clear chat</button></p>
  <div id="status"></div>
</aside>
<main>
  <div id="messages"></div>
  <form id="composer">
    <textarea id="prompt" placeholder="Message (Enter sends, Shift+Enter is a new line)"></textarea>
    <button id="send" type="submit">Send</button>
    <button id="stop" class="secondary" type="button" disabled>Stop</button>
  </form>
</main>
<script>
"use strict";

// ---- Network part: no DOM access (the tests run it under node). ----

function authHeaders(apiKey) {
  const headers = { "Content-Type": "application/json" };
  if (apiKey) headers["Authorization"] = "Bearer " + apiKey;
  return headers;
}

async function errorText(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body.error && body.error.message) return response.status + ": " + body.error.message;
    if (body.error) return response.status + ": " + JSON.stringify(body.error);
    if (body.detail) return response.status + ": " + body.detail;
  } catch (e) { /* not JSON: show the text */ }
  return response.status + ": " + (text || response.statusText);
}

// origin is "" in the page (same-origin relative URLs); the tests pass the server's address.
async function listModels(origin, apiKey) {
  const response = await fetch(origin + "/v1/models", { headers: authHeaders(apiKey) });
  if (!response.ok) throw new Error(await errorText(response));
  const body = await response.json();
  return body.data.map((card) => card.id);
}

// Feeds every complete SSE line of buffer to onData (the payload of "data:" lines); returns the rest.
function consumeSseLines(buffer, onData) {
  let start = 0;
  let newline;
  while ((newline = buffer.indexOf("\n", start)) >= 0) {
    let line = buffer.slice(start, newline);
    start = newline + 1;
    if (line.endsWith("\r")) line = line.slice(0, -1);
    if (line.startsWith("data:")) onData(line.slice(5).trimStart());
  }
  return buffer.slice(start);
}

function newReply() {
  return { content: "", reasoning: "", toolCalls: [], finishReason: null, usage: null, error: null };
}

// Folds one chat.completion.chunk into reply (OpenAI's delta format; tool calls arrive by index).
function applyChunk(reply, chunk) {
  if (chunk.error) {
    reply.error = chunk.error.message || JSON.stringify(chunk.error);
    return;
  }
  if (chunk.usage) reply.usage = chunk.usage;
  for (const choice of chunk.choices || []) {
    const delta = choice.delta || {};
    if (delta.content) reply.content += delta.content;
    if (delta.reasoning_content) reply.reasoning += delta.reasoning_content;
    for (const call of delta.tool_calls || []) {
      const index = call.index === undefined ? reply.toolCalls.length : call.index;
      if (!reply.toolCalls[index]) {
        reply.toolCalls[index] = { id: "", type: "function", function: { name: "", arguments: "" } };
      }
      const slot = reply.toolCalls[index];
      if (call.id) slot.id = call.id;
      if (call.function && call.function.name) slot.function.name += call.function.name;
      if (call.function && call.function.arguments) slot.function.arguments += call.function.arguments;
    }
    if (choice.finish_reason) reply.finishReason = choice.finish_reason;
  }
}

// Streams one chat completion; onUpdate(reply) after every chunk. Resolves with the reply; when signal
// aborts, resolves with reply.finishReason = "aborted" (the server aborts the request on disconnect).
async function streamChat(origin, apiKey, request, signal, onUpdate) {
  const reply = newReply();
  const body = Object.assign({}, request, { stream: true, stream_options: { include_usage: true } });
  try {
    const response = await fetch(origin + "/v1/chat/completions", {
      method: "POST", headers: authHeaders(apiKey), body: JSON.stringify(body), signal: signal,
    });
    if (!response.ok) {
      reply.error = await errorText(response);
      return reply;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let done = false;
    while (!done) {
      const part = await reader.read();
      if (part.done) break;
      buffer += decoder.decode(part.value, { stream: true });
      buffer = consumeSseLines(buffer, (data) => {
        if (data === "[DONE]") { done = true; return; }
        applyChunk(reply, JSON.parse(data));
      });
      if (onUpdate) onUpdate(reply);
    }
  } catch (e) {
    if (e.name !== "AbortError") throw e;
    reply.finishReason = "aborted";
  }
  return reply;
}

// ---- Page part: DOM helpers, then the wiring of the controls. ----

function $(id) { return document.getElementById(id); }

function setStatus(text) { $("status").textContent = text; }

async function loadModels() {
  const select = $("model");
  try {
    const ids = await listModels("", $("api-key").value);
    select.replaceChildren(...ids.map((id) => new Option(id, id)));
    setStatus(ids.length + " model(s) served");
  } catch (e) {
    select.replaceChildren();
    setStatus("Could not list models: " + e.message);
  }
}

function addMessage(role) {
  const box = document.createElement("div");
  box.className = "msg " + role;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role;
  box.append(label);
  for (const part of ["reasoning", "content", "tools", "meta"]) {
    const el = document.createElement("div");
    el.className = part;
    box.append(el);
  }
  $("messages").append(box);
  return box;
}

function render(box, reply) {
  box.querySelector(".reasoning").textContent = reply.reasoning;
  box.querySelector(".content").textContent = reply.content;
  box.querySelector(".tools").replaceChildren(...reply.toolCalls.filter(Boolean).map((call) => {
    const el = document.createElement("div");
    el.className = "tool-call";
    el.textContent = "tool call " + call.function.name + "(" + call.function.arguments + ")" +
                     (call.id ? "  id " + call.id : "");
    return el;
  }));
  const meta = [];
  if (reply.finishReason) meta.push("finish: " + reply.finishReason);
  if (reply.usage) meta.push(reply.usage.prompt_tokens + " prompt + " + reply.usage.completion_tokens + " tokens");
  box.querySelector(".meta").textContent = meta.join(" · ");
  if (reply.error) {
    box.classList.add("error");
    box.querySelector(".content").textContent = reply.content + (reply.content ? "\n" : "") + reply.error;
  }
  $("messages").scrollTop = $("messages").scrollHeight;
}

// The request for the conversation so far, with the settings of the side panel.
function buildRequest(history) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  const request = { model: $("model").value, messages: messages.concat(history) };
  const temperature = parseFloat($("temperature").value);
  if (!Number.isNaN(temperature)) request.temperature = temperature;
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (maxTokens > 0) request.max_tokens = maxTokens;
  const tools = $("tools").value.trim();
  if (tools) request.tools = JSON.parse(tools);
  return request;
}

function startPage() {
  const history = [];  // the conversation: user and assistant messages
  let controller = null;  // the AbortController of the reply in progress

  async function send(text) {
    history.push({ role: "user", content: text });
    render(addMessage("user"), Object.assign(newReply(), { content: text }));
    const box = addMessage("assistant");
    let reply = newReply();
    controller = new AbortController();
    $("send").disabled = true;
    $("stop").disabled = false;
    try {
      reply = await streamChat("", $("api-key").value, buildRequest(history), controller.signal,
                               (r) => render(box, r));
    } catch (e) {
      reply.error = String(e.message || e);
    }
    render(box, reply);
    if (!reply.error) {
      const message = { role: "assistant", content: reply.content };
      const calls = reply.toolCalls.filter(Boolean);
      if (calls.length) message.tool_calls = calls;
      history.push(message);
    } else {
      history.pop();  // keep the conversation valid for the next try
    }
    controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }

  $("api-key").value = sessionStorage.getItem("k2-api-key") || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem("k2-api-key", $("api-key").value);
    loadModels();
  });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || controller) return;
    $("prompt").value = "";
    send(text);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => { if (controller) controller.abort(); });
  $("reload").addEventListener("click", loadModels);
  $("clear").addEventListener("click", () => { history.length = 0; $("messages").replaceChildren(); });
  loadModels();
}

if (typeof document !== "undefined") startPage();
</script>
</body>
</html>
)K2HTML";

}  // namespace

bool is_web_chat_path(std::string_view path) {
    return path == "/" || path == "/chat";
}

std::string_view web_chat_html() {
    return kPage;
}

HttpResponse web_chat_response() {
    // no-store: a rebuilt server must not be paired with a cached page of another version.
    return {200, "text/html; charset=utf-8", std::string(kPage), {{"Cache-Control", "no-store"}}};
}

}  // namespace k2::server

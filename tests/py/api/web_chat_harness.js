// Runs the chat page's script under node against a live server, as a browser would: node's fetch, TextDecoder
// and AbortController are the WHATWG ones; for the page actions a minimal fake DOM stands in for the document.
// Usage: node web_chat_harness.js SCRIPT ORIGIN API_KEY ACTION [JSON]
//   models              listModels()
//   chat JSON           streamChat() with JSON as the request
//   abort JSON          streamChat(), aborted after the second update (what the Stop button does)
//   page JSON           the whole page: JSON sets the side panel ({system, temperature, max_tokens, tools, prompt}),
//                       the prompt is sent with Enter, and the rendered messages are returned
//   page-stop JSON      the same, clicking Stop once the reply has text
// Prints {"ok": true, "result": ...} or {"ok": false, "error": "..."}.
"use strict";
const fs = require("fs");
const vm = require("vm");

const [scriptPath, origin, apiKey, action, json] = process.argv.slice(2);

class FakeElement {
  constructor(tag, id) {
    Object.assign(this, { tag, id, children: [], value: "", textContent: "", className: "", disabled: false,
                          listeners: {}, scrollTop: 0, scrollHeight: 0 });
    this.classList = { add: (name) => { this.className += " " + name; } };
  }
  addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); }
  dispatch(type, fields) {
    for (const fn of this.listeners[type] || []) fn(Object.assign({ preventDefault() {} }, fields));
  }
  append(...elements) { this.children.push(...elements); }
  replaceChildren(...elements) {
    this.children = elements;
    if (this.tag === "select") this.value = elements.length ? elements[0].value : "";
  }
  querySelector(selector) { return this.children.find((c) => c.className.split(" ").includes(selector.slice(1))); }
  requestSubmit() { this.dispatch("submit", {}); }
}

function fakeDocument(panel) {
  const elements = {};
  const ids = ["model", "api-key", "system", "temperature", "max-tokens", "tools", "reload", "clear", "status",
               "messages", "composer", "prompt", "send", "stop"];
  for (const id of ids) elements[id] = new FakeElement(id === "model" ? "select" : "input", id);
  elements["system"].value = panel.system || "";
  elements["temperature"].value = String(panel.temperature);
  elements["max-tokens"].value = String(panel.max_tokens);
  if (panel.tools) elements["tools"].value = JSON.stringify(panel.tools);
  elements["stop"].disabled = true;
  return { elements, getElementById: (id) => elements[id], createElement: (tag) => new FakeElement(tag, "") };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
async function until(condition, what) {
  for (let i = 0; i < 600; ++i) {
    if (condition()) return;
    await sleep(50);
  }
  throw new Error("timed out waiting for " + what);
}

async function runPage(context, panel, stop) {
  const { elements } = context.document;
  await until(() => elements["model"].children.length > 0 || elements["status"].textContent, "the model list");
  elements["prompt"].value = panel.prompt;
  elements["prompt"].dispatch("keydown", { key: "Enter", shiftKey: false });
  await until(() => elements["messages"].children.length === 2, "the reply box");
  const assistant = elements["messages"].children[1];
  const text = (name) => assistant.querySelector("." + name).textContent;
  if (stop) {
    await until(() => text("content").length > 0, "the first text");
    elements["stop"].dispatch("click", {});
  }
  await until(() => !elements["send"].disabled, "the end of the reply");
  return {
    models: elements["model"].children.map((option) => option.value),
    status: elements["status"].textContent,
    user: elements["messages"].children[0].querySelector(".content").textContent,
    content: text("content"),
    tools: assistant.querySelector(".tools").children.map((c) => c.textContent),
    meta: text("meta"),
    assistantClass: assistant.className,
    stopDisabled: elements["stop"].disabled,
  };
}

async function main() {
  const request = json ? JSON.parse(json) : null;
  const isPage = action === "page" || action === "page-stop";
  const context = vm.createContext({ fetch, TextDecoder, AbortController, console, setTimeout });
  if (isPage) {
    // A browser resolves the page's URLs against its origin; anything but a same-origin path is an error here.
    context.fetch = (url, init) => {
      if (typeof url !== "string" || !url.startsWith("/") || url.startsWith("//")) {
        throw new Error("the page fetched a URL that is not a same-origin path: " + url);
      }
      return fetch(new URL(url, origin), init);
    };
    context.document = fakeDocument(request);
    context.sessionStorage = { getItem: () => apiKey, setItem: () => {} };
    context.Option = function Option(text, value) {
      return Object.assign(new FakeElement("option", ""), { textContent: text, value });
    };
  }
  vm.runInContext(fs.readFileSync(scriptPath, "utf8"), context, { filename: scriptPath });  // starts the page
  if (isPage) return runPage(context, request, action === "page-stop");
  if (action === "models") return context.listModels(origin, apiKey);
  const controller = new AbortController();
  let updates = 0;
  const reply = await context.streamChat(origin, apiKey, request, controller.signal, () => {
    updates += 1;
    if (action === "abort" && updates === 2) controller.abort();
  });
  return Object.assign({ updates }, reply);
}

main().then(
  (result) => process.stdout.write(JSON.stringify({ ok: true, result })),
  (error) => process.stdout.write(JSON.stringify({ ok: false, error: String(error && error.message || error) })));

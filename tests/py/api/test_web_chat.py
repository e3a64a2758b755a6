"""The built-in chat page (GET / and /chat): served as one self-contained HTML page without the API key, its
script calls only same-origin /v1/ paths (so --api-key still guards them), and run under node against the
live server its streaming code rebuilds exactly what the official openai client receives (text, tool calls),
and its Stop button aborts the request on the server.
"""
import functools
import json
import pathlib
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import openai
import pytest

from k2_api_server import API_KEY, TINY, Server

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}}]

HARNESS = pathlib.Path(__file__).with_name("web_chat_harness.js")
NODE = shutil.which("node")


def needs_node(test):
    """node runs the page's script; scripts/setup installs it, so its absence is a failure, never a skip (a skip
    would hide an unchecked page in CI)."""
    def wrapper(*args, **kwargs):
        assert NODE is not None, ("node is not installed, so the page's script can be neither syntax-checked nor "
                                  "run: scripts/setup installs it (Debian: apt-get install nodejs)")
        return test(*args, **kwargs)
    return functools.wraps(test)(wrapper)


def fetch(base, path, method="GET", headers=None):
    request = urllib.request.Request(base + path, method=method, headers=headers or {},
                                     data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def page_script(html):
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(scripts) == 1, "one inline script"
    return scripts[0]


@pytest.fixture(scope="module")
def script_file(tiny_server, tmp_path_factory):
    status, _, html = fetch(tiny_server.base, "/")
    assert status == 200
    path = tmp_path_factory.mktemp("web") / "chat.js"
    path.write_text(page_script(html))
    return path


def run_page(script_file, server, action, request=None, api_key=""):
    args = [NODE, str(HARNESS), str(script_file), server.base, api_key, action]
    if request is not None:
        args.append(json.dumps(request))
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_page_is_served_without_the_key(tiny_server):
    for path in ("/", "/chat"):
        status, content_type, html = fetch(tiny_server.base, path)
        assert status == 200, path
        assert content_type.startswith("text/html"), content_type
        assert html.startswith("<!DOCTYPE html>")
        for element in ('<select id="model"', 'id="api-key"', 'id="system"', 'id="temperature"',
                        'id="max-tokens"', 'id="prompt"', 'id="send"', 'id="stop"'):
            assert element in html, element
        # Self-contained: nothing is loaded from anywhere else.
        for external in ("<link", "src=", "href=", "http://", "https://", "@import", "url("):
            assert external not in html, external


def test_script_uses_only_same_origin_api_paths(tiny_server):
    script = page_script(fetch(tiny_server.base, "/")[2])
    literals = re.findall(r"\"([^\"\\\n]*)\"|'([^'\\\n]*)'|`([^`\\]*)`", script)
    paths = [text for groups in literals for text in groups if text.startswith("/") or "://" in text]
    assert sorted(paths) == ["/v1/chat/completions", "/v1/models"]
    assert re.findall(r"fetch\(([^,)]*)", script) == ['origin + "/v1/models"', 'origin + "/v1/chat/completions"']


def test_api_key_still_guards_the_api(tiny_server):
    assert fetch(tiny_server.base, "/v1/models")[0] == 401
    assert fetch(tiny_server.base, "/v1/chat/completions", "POST")[0] == 401
    assert fetch(tiny_server.base, "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})[0] == 200
    assert fetch(tiny_server.base, "/", "POST")[0] == 401  # only GET serves the page


def test_disable_web_ui():
    server = Server([str(TINY), "--disable-web-ui"], log_name="no-web-ui")
    try:
        assert fetch(server.base, "/")[0] == 404
        assert fetch(server.base, "/chat")[0] == 404
        assert fetch(server.base, "/v1/models")[0] == 200
    finally:
        assert server.stop() == 0, server.log_text()


@needs_node
def test_script_syntax(script_file):
    done = subprocess.run([NODE, "--check", str(script_file)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@needs_node
def test_page_lists_models_with_the_key(script_file, tiny_server):
    listed = run_page(script_file, tiny_server, "models", api_key=API_KEY)
    assert listed == {"ok": True, "result": ["tiny", "tiny-alias"]}
    denied = run_page(script_file, tiny_server, "models")
    assert not denied["ok"] and denied["error"].startswith("401")


@needs_node
def test_page_stream_equals_openai_client(script_file, tiny_server):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    client = openai.OpenAI(base_url=tiny_server.base + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    expected = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=12)
    got = run_page(script_file, tiny_server, "chat", {"model": "tiny", "messages": messages, "temperature": 0,
                                                      "max_tokens": 12}, api_key=API_KEY)
    assert got["ok"], got
    reply = got["result"]
    assert reply["error"] is None
    assert reply["content"] == expected.choices[0].message.content
    assert reply["finishReason"] == expected.choices[0].finish_reason
    assert reply["usage"]["completion_tokens"] == expected.usage.completion_tokens
    assert reply["updates"] >= 2  # streamed, not one block
    unauthorized = run_page(script_file, tiny_server, "chat", {"model": "tiny", "messages": messages})
    assert unauthorized["result"]["error"].startswith("401")


@needs_node
def test_page_rebuilds_tool_calls(script_file, scripted_server):
    messages = [{"role": "user", "content": "case-parallel: go"}]
    client = openai.OpenAI(base_url=scripted_server.base + "/v1", api_key="unused", max_retries=0, timeout=60)
    expected = client.chat.completions.create(model="scripted", messages=messages, tools=TOOLS, max_tokens=200)
    got = run_page(script_file, scripted_server, "chat",
                   {"model": "scripted", "messages": messages, "tools": TOOLS, "max_tokens": 200})
    assert got["ok"], got
    reply = got["result"]
    message = expected.choices[0].message
    assert reply["content"] == message.content
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in reply["toolCalls"]] == \
        [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls]
    assert reply["finishReason"] == "tool_calls"


def metric(text, name):
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
              or line.startswith(name + "{")]
    assert values, name
    return sum(values)


@needs_node
def test_stop_button_aborts_on_the_server(script_file, scripted_server):
    def aborted_count():
        text = fetch(scripted_server.base, "/metrics")[2]
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("vllm:request_success_total{") and 'finished_reason="abort"' in line)

    before = aborted_count()
    started = time.time()
    got = run_page(script_file, scripted_server, "abort",
                   {"model": "scripted", "messages": [{"role": "user", "content": "SLOW web"}], "max_tokens": 400})
    assert got["ok"], got
    assert got["result"]["finishReason"] == "aborted"
    assert got["result"]["content"] and (" tick" * 400).startswith(got["result"]["content"])
    # 400 scripted steps of 20 ms: only the abort frees the server within a few seconds.
    deadline = time.time() + 5
    while time.time() < deadline:
        text = fetch(scripted_server.base, "/metrics")[2]
        if metric(text, "vllm:num_requests_running") == 0 and aborted_count() == before + 1:
            break
        time.sleep(0.05)
    assert metric(text, "vllm:num_requests_running") == 0
    assert aborted_count() == before + 1
    assert time.time() - started < 8


@needs_node
def test_whole_page_chats_with_the_key(script_file, tiny_server):
    # The page itself (fake DOM): the key from the API-key field, the model list, Enter sends, the reply rendered.
    client = openai.OpenAI(base_url=tiny_server.base + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi page"}]
    expected = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=10)
    got = run_page(script_file, tiny_server, "page",
                   {"system": "Be brief.", "temperature": 0, "max_tokens": 10, "prompt": "Hi page"}, api_key=API_KEY)
    assert got["ok"], got
    page = got["result"]
    assert page["models"] == ["tiny", "tiny-alias"]
    assert page["user"] == "Hi page"
    assert page["content"] == expected.choices[0].message.content
    assert f"finish: {expected.choices[0].finish_reason}" in page["meta"]
    assert f"+ {expected.usage.completion_tokens} tokens" in page["meta"]
    assert "error" not in page["assistantClass"] and page["stopDisabled"]


@needs_node
def test_whole_page_without_the_key_shows_401(script_file, tiny_server):
    got = run_page(script_file, tiny_server, "page", {"temperature": 0, "max_tokens": 4, "prompt": "Hi"})
    assert got["ok"], got
    page = got["result"]
    assert page["models"] == [] and page["status"].startswith("Could not list models: 401")
    assert "error" in page["assistantClass"] and page["content"].startswith("401")


@needs_node
def test_whole_page_stop_button(script_file, scripted_server):
    got = run_page(script_file, scripted_server, "page-stop",
                   {"temperature": 0, "max_tokens": 400, "prompt": "SLOW page"})
    assert got["ok"], got
    page = got["result"]
    assert page["models"] == ["scripted"]
    # Stopped part-way: a non-empty prefix of the scripted 400 ticks.
    assert page["content"] and (" tick" * 400).startswith(page["content"])
    assert len(page["content"]) < len(" tick") * 400
    assert page["meta"] == "finish: aborted"


@needs_node
def test_whole_page_shows_tool_calls(script_file, scripted_server):
    messages = [{"role": "user", "content": "case-parallel: go"}]
    client = openai.OpenAI(base_url=scripted_server.base + "/v1", api_key="unused", max_retries=0, timeout=60)
    expected = client.chat.completions.create(model="scripted", messages=messages, tools=TOOLS, max_tokens=200)
    got = run_page(script_file, scripted_server, "page",
                   {"temperature": 0, "max_tokens": 200, "tools": TOOLS, "prompt": "case-parallel: go"})
    assert got["ok"], got
    page = got["result"]
    message = expected.choices[0].message
    assert page["content"] == message.content
    assert page["tools"] == [f"tool call {c.function.name}({c.function.arguments})  id {c.id}"
                             for c in message.tool_calls]
    assert page["meta"].startswith("finish: tool_calls")

"""The built-in chat page in a real browser: Debian's headless Chromium, driven over the DevTools protocol
(aiohttp's websocket client), against `k2 serve`. A message is typed into the page and sent with Enter; the
reply must stream into the DOM (seen partly written before it finishes), a tool call from the test-only
scripted model must be displayed as the page shows tool calls, and a screenshot of the page must be a
valid, non-blank PNG of the window's size. One chat also runs against the real tiny model.

Needs the `chromium` package (scripts/setup installs it): without it the tests fail and say so.
"""
import asyncio
import base64
import json
import pathlib
import shutil
import struct
import subprocess
import time
import zlib

import aiohttp
import pytest

from k2_api_server import API_KEY, TINY, Server

WIDTH, HEIGHT = 1280, 800
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}}]
STREAMED = "Streaming from the scripted model, one piece at a time, so the page shows it as it arrives."
SCRIPT = {"outputs": [
    # The first rule whose text is in the prompt wins; the second turn's prompt holds the first turn too.
    {"prompt_contains": "browser-tool",
     "text": "Let me look. <|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
             "<|tool_call_argument_begin|>{\"city\": \"Beijing\"}<|tool_call_end|><|tool_calls_section_end|>"},
    {"prompt_contains": "browser-stream", "text": STREAMED, "delay_ms": 40},
]}


def chromium_binary():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed, so the chat page cannot be tested in a browser "
                "(Debian: apt-get install chromium; scripts/setup installs it)")


class Browser:
    """One headless Chromium with one page, commanded over the DevTools websocket."""

    def __init__(self, profile_dir):
        # Chromium logs freely to stderr (D-Bus is absent here): a file, so a full pipe never blocks it.
        self.log_path = pathlib.Path(str(profile_dir) + ".log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0",
             f"--user-data-dir={profile_dir}", f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        # Chromium writes the port it chose into the profile; no guessed port can collide.
        port_file = pathlib.Path(profile_dir) / "DevToolsActivePort"
        deadline = time.time() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None:
                pytest.fail(f"chromium exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            if time.time() > deadline:
                self.close()
                pytest.fail("chromium did not open its DevTools port within 30 s")
            time.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])
        self.next_id = 0
        self.events = []

    async def connect(self, session):
        async with session.get(f"http://127.0.0.1:{self.port}/json/list") as r:
            pages = [t for t in await r.json() if t["type"] == "page"]
        assert pages, "chromium has no page target"
        self.ws = await session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=64 << 20)

    async def send(self, method, **params):
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send_str(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            message = json.loads((await self.ws.receive(timeout=30)).data)
            if message.get("id") == my_id:
                assert "error" not in message, f"{method}: {message['error']}"
                return message["result"]
            self.events.append(message)

    async def wait_event(self, method, timeout=20):
        deadline = time.time() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            remaining = deadline - time.time()
            assert remaining > 0, f"no {method} within {timeout} s"
            self.events.append(json.loads((await self.ws.receive(timeout=remaining)).data))

    async def evaluate(self, expression):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def open(self, url):
        await self.send("Page.enable")
        await self.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1,
                        mobile=False)
        await self.send("Page.navigate", url=url)
        await self.wait_event("Page.loadEventFired")

    async def type_and_press_enter(self, selector, text):
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):
            await self.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter",
                            windowsVirtualKeyCode=13, nativeVirtualKeyCode=13, **({"text": "\r"} if kind == "keyDown" else {}))

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# What the page shows of its last assistant message (the DOM that render() writes).
LAST_REPLY = """(() => {
  const boxes = document.querySelectorAll(".msg.assistant");
  const box = boxes[boxes.length - 1];
  if (!box) return null;
  return {content: box.querySelector(".content").textContent,
          tools: [...box.querySelectorAll(".tool-call")].map((e) => e.textContent),
          meta: box.querySelector(".meta").textContent, error: box.classList.contains("error"),
          sendDisabled: document.getElementById("send").disabled};
})()"""


async def chat_turn(browser, text, timeout=30):
    """Types text, presses Enter, polls the DOM until the reply finished; returns every state seen."""
    before = await browser.evaluate("document.querySelectorAll('.msg.assistant').length")
    await browser.type_and_press_enter("#prompt", text)
    states, deadline = [], time.time() + timeout
    while time.time() < deadline:
        count = await browser.evaluate("document.querySelectorAll('.msg.assistant').length")
        state = await browser.evaluate(LAST_REPLY) if count > before else None
        if state is not None:
            states.append(state)
            if "finish:" in state["meta"] and not state["sendDisabled"]:
                return states
        await asyncio.sleep(0.02)
    pytest.fail(f"no finished reply to {text!r} within {timeout} s; last states {states[-3:]}")


def check_png(data):
    """(width, height) of a well-formed 8-bit PNG: signature, every chunk's CRC, IHDR, a complete image stream."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks = 8, {}
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body), kind
        chunks.setdefault(kind, []).append(body)
        pos += 12 + length
    assert b"IEND" in chunks, "truncated PNG"
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"][0])
    assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
    channels = 3 if color == 2 else 4
    assert len(zlib.decompress(b"".join(chunks[b"IDAT"]))) == height * (width * channels + 1)
    return width, height


# Decodes the screenshot in the page (the browser's PNG decoder) and reports what is in it.
PIXEL_STATS = """(async () => {
  const img = new Image();
  img.src = "data:image/png;base64,%s";
  await img.decode();
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const colours = new Set();
  let toolBox = 0;
  for (let i = 0; i < data.length; i += 4) {
    colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
    if (data[i] === 0xff && data[i + 1] === 0xf6 && data[i + 2] === 0xe0) toolBox++;
  }
  return {width: canvas.width, height: canvas.height, colours: colours.size, toolBox: toolBox};
})()"""


@pytest.fixture(scope="module")
def browser_server(tmp_path_factory):
    script = tmp_path_factory.mktemp("browser-script") / "script.json"
    script.write_text(json.dumps(SCRIPT))
    server = Server([str(TINY), "--served-model-name", "scripted", "--test-scripted-output", str(script),
                     "--enable-auto-tool-choice", "--tool-call-parser", "kimi_k2"],
                    env={"K2_ENABLE_TEST_MODEL": "1"}, log_name="browser")
    yield server
    assert server.stop() == 0, server.log_text()


def run_in_browser(tmp_path, scenario):
    async def main():
        browser = Browser(tmp_path / "profile")
        try:
            async with aiohttp.ClientSession() as session:
                await browser.connect(session)
                await scenario(browser)
                await browser.ws.close()
        finally:
            browser.close()
    asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_chat_streams_shows_tool_calls_and_renders(browser_server, tmp_path):
    shot = tmp_path / "chat.png"

    async def scenario(browser):
        await browser.open(browser_server.base + "/")
        # The page lists the served models on load.
        for _ in range(100):
            if await browser.evaluate("document.getElementById('model').value") == "scripted":
                break
            await asyncio.sleep(0.05)
        assert await browser.evaluate("document.getElementById('model').value") == "scripted"

        states = await chat_turn(browser, "browser-stream please")
        final = states[-1]
        assert final["content"] == STREAMED and not final["error"], final
        assert "finish: stop" in final["meta"], final
        # Streaming: the DOM held a strict, non-empty prefix of the reply while the request was running.
        partial = [s for s in states if 0 < len(s["content"]) < len(STREAMED) and s["sendDisabled"]]
        assert partial, f"the reply never appeared partly written ({len(states)} DOM states seen)"
        assert all(STREAMED.startswith(s["content"]) for s in states)

        await browser.evaluate(f"document.getElementById('tools').value = {json.dumps(json.dumps(TOOLS))}")
        final = (await chat_turn(browser, "browser-tool: weather in Beijing?"))[-1]
        assert final["content"] == "Let me look. " and not final["error"], final
        assert final["tools"] == ['tool call get_weather({"city": "Beijing"})  id functions.get_weather:0'], final
        assert "finish: tool_calls" in final["meta"], final
        # Both user messages and both replies are on the page.
        assert await browser.evaluate("document.querySelectorAll('.msg.user').length") == 2

        png = await browser.send("Page.captureScreenshot", format="png")
        shot.write_bytes(base64.b64decode(png["data"]))
        stats.update(await browser.evaluate(PIXEL_STATS % png["data"]))

    stats = {}
    run_in_browser(tmp_path, scenario)
    assert check_png(shot.read_bytes()) == (WIDTH, HEIGHT)
    assert (stats["width"], stats["height"]) == (WIDTH, HEIGHT), stats
    # Not blank: text, panels and buttons make many colours; the tool-call box (#fff6e0) is on screen.
    assert stats["colours"] > 20, f"the screenshot is nearly blank: {stats}"
    assert stats["toolBox"] > 1000, f"no tool-call box in the screenshot: {stats}"


def test_chat_with_the_real_tiny_model(tiny_server, tmp_path):
    async def scenario(browser):
        await browser.open(tiny_server.base + "/")
        await browser.evaluate(
            "(() => { document.getElementById('api-key').value = %s;"
            " document.getElementById('api-key').dispatchEvent(new Event('change')); })()" % json.dumps(
                API_KEY))
        for _ in range(100):
            if await browser.evaluate("document.getElementById('model').value") == "tiny":
                break
            await asyncio.sleep(0.05)
        await browser.evaluate("document.getElementById('max-tokens').value = '8'")
        final = (await chat_turn(browser, "Hello"))[-1]
        assert not final["error"], final
        assert "finish: length" in final["meta"] or "finish: stop" in final["meta"], final
        assert " + " in final["meta"] and "tokens" in final["meta"], final  # usage was shown

    run_in_browser(tmp_path, scenario)

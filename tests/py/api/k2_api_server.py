"""Helpers of the API tests: starts `k2 serve` (env K2_BIN) on a free loopback port and waits for /health; stops it with SIGTERM.

Two servers: the tiny real model (tests/fixtures/tiny-kimi-k2) and the same checkpoint with the test-only
scripted model (exact outputs for tool-call and load tests).
"""
import json
import os
import pathlib
import resource
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
TINY = REPO / "tests" / "fixtures" / "tiny-kimi-k2"
API_KEY = "k2-test-key"
MAX_MODEL_LEN = 512
MAX_BODY_BYTES = 1 << 20

# 1,024 concurrent streams need more descriptors than the usual soft limit.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _soft < min(_hard, 8192):
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(_hard, 8192), _hard))


def k2_bin():
    path = os.environ.get("K2_BIN")
    if not path:
        pytest.fail("K2_BIN is not set (path to the built k2 binary); scripts/test sets it")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args, env=None, log_name="server"):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"k2-{log_name}-{self.port}.log"
        self.log = open(self.log_path, "w")
        full_env = dict(os.environ)
        full_env.update(env or {})
        # K2_TEST_SERVE_ARGS (e.g. "--device cuda") runs the same suite against another backend.
        extra = shlex.split(os.environ.get("K2_TEST_SERVE_ARGS", ""))
        self.proc = subprocess.Popen(
            [k2_bin(), "serve", *args, *extra, "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        self.wait_healthy()

    def wait_healthy(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"k2 serve exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)
        pytest.fail(f"k2 serve did not become healthy:\n{self.log_path.read_text()}")

    def get(self, path, timeout=10):
        with urllib.request.urlopen(self.base + path, timeout=timeout) as r:
            return r.status, r.read().decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def log_text(self):
        return self.log_path.read_text()


SCRIPT = {
    "outputs": [
        {"prompt_contains": "case-single",
         "text": "I'll check. <|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
                 "<|tool_call_argument_begin|>{\"city\": \"Beijing\"}<|tool_call_end|><|tool_calls_section_end|>"},
        {"prompt_contains": "case-parallel",
         "text": "Checking both. <|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
                 "<|tool_call_argument_begin|>{\"city\": \"Beijing\"}<|tool_call_end|><|tool_call_begin|>"
                 "functions.get_weather:1<|tool_call_argument_begin|>{\"city\": \"Shanghai\"}<|tool_call_end|>"
                 "<|tool_calls_section_end|>"},
        {"prompt_contains": "case-named",
         "text": "{\"city\": \"Paris\"}<|tool_call_end|><|tool_calls_section_end|>"},
        {"prompt_contains": "case-required",
         "text": "<|tool_call_begin|>functions.get_time:0<|tool_call_argument_begin|>{\"zone\": \"UTC\"}"
                 "<|tool_call_end|><|tool_calls_section_end|>"},
        {"prompt_contains": "case-stop", "text": "alpha beta STOP gamma delta"},
        {"prompt_contains": "case-plain", "text": "Just text, no tools."},
        {"prompt_contains": "SLOW", "text": " tick" * 400, "delay_ms": 20},
        {"prompt_contains": "Echo", "echo": True},
    ]
}

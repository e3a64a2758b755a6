"""Faults (issue 11 point 6) on the server side: an unreadable or corrupt shard at load ends `k2 serve` with a
message naming the file and a non-zero exit (no crash, no hang); SIGTERM under load lets running requests
complete or ends them with finish_reason "abort" by --shutdown-timeout, and the process exits 0 within a
bound. (A worker crash is covered by the dist tests; a full disk under `k2 bench serve --save-result` by
tests/py/bench/test_bench_faults.py.)"""
import json
import os
import signal
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from k2_api_server import TINY, Server, free_port, k2_bin

SHARD = "model-00002-of-00002.safetensors"


def broken_copy(tmp_path, breaker):
    """The tiny checkpoint with every file linked except the second shard, which `breaker(path)` writes."""
    model = tmp_path / "model"
    model.mkdir()
    for item in TINY.iterdir():
        if item.name != SHARD:
            os.symlink(item, model / item.name)
    breaker(model / SHARD)
    return model


def truncate(path):
    data = (TINY / SHARD).read_bytes()
    path.write_bytes(data[:len(data) // 2])


def huge_header_length(path):
    data = (TINY / SHARD).read_bytes()
    path.write_bytes(struct.pack("<Q", 1 << 60) + data[8:])


def garbage_header(path):
    data = (TINY / SHARD).read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    path.write_bytes(data[:8] + b"{not json" + b" " * (header_len - 9) + data[8 + header_len:])


def unreadable(path):
    path.mkdir()  # open() fails with EISDIR; stands in for EACCES, which root (CI) would not see


def missing(path):
    os.symlink(path.parent / "no-such-file", path)


@pytest.mark.parametrize("breaker", [truncate, huge_header_length, garbage_header, unreadable, missing])
def test_broken_shard_fails_clearly(tmp_path, breaker):
    model = broken_copy(tmp_path, breaker)
    start = time.monotonic()
    proc = subprocess.run([k2_bin(), "serve", str(model), "--host", "127.0.0.1", "--port", str(free_port())],
                          capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"exit {proc.returncode} (a negative code is a signal, i.e. a crash):\n{output}"
    assert SHARD in output, output
    assert "Traceback" not in output and "terminate called" not in output, output
    assert time.monotonic() - start < 60


def post(base, body, stream):
    """Returns (finish_reason, completion_tokens from usage)."""
    if stream:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        if not stream:
            response = json.loads(r.read())
            return response["choices"][0]["finish_reason"], response["usage"]["completion_tokens"]
        reason, tokens = None, None
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                reason = choice.get("finish_reason") or reason
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
        return reason, tokens


def test_sigterm_under_load_completes_or_aborts_within_the_timeout(tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"prompt_contains": "", "text": " tick" * 1000, "delay_ms": 20}]))
    server = Server([str(TINY), "--test-scripted-output", str(script), "--served-model-name", "load",
                     "--shutdown-timeout", "2"], env={"K2_ENABLE_TEST_MODEL": "1"}, log_name="sigterm-load")
    results = {}

    def run(index, max_tokens, stream):
        try:
            results[index] = (max_tokens, post(server.base, {"model": "load", "prompt": "go",
                                                             "max_tokens": max_tokens}, stream))
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            results[index] = (max_tokens, ("error", str(e)))

    # 24 short requests (30 steps of 20 ms) finish inside the timeout; 8 long ones (1000 steps) cannot.
    jobs = [(i, 30 if i < 24 else 1000, i % 2 == 0) for i in range(32)]
    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(timeout=30)
    exit_s = time.monotonic() - signalled
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a request hung after the server exited"
    log = server.log_text()
    server.stop()
    assert code == 0, log
    assert exit_s < 2 + 10, exit_s  # --shutdown-timeout plus the flush bound
    assert len(results) == 32
    for index, (max_tokens, (reason, tokens)) in results.items():
        if max_tokens == 30:
            assert (reason, tokens) == ("length", 30), (index, reason, tokens)
        else:
            assert reason in ("abort", "error"), (index, reason, tokens)
            assert tokens is None or tokens < 1000, (index, reason, tokens)
    assert "Received signal SIGTERM" in log


def test_new_requests_after_sigterm_are_refused(tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"prompt_contains": "", "text": " tick" * 1000, "delay_ms": 20}]))
    server = Server([str(TINY), "--test-scripted-output", str(script), "--served-model-name", "late",
                     "--shutdown-timeout", "1"], env={"K2_ENABLE_TEST_MODEL": "1"}, log_name="sigterm-late")
    thread = threading.Thread(target=lambda: post(server.base, {"model": "late", "prompt": "go", "max_tokens": 500},
                                                  True))
    thread.start()
    time.sleep(0.3)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)) as e:
        post(server.base, {"model": "late", "prompt": "go", "max_tokens": 2}, False)
    if isinstance(e.value, urllib.error.HTTPError):
        assert e.value.code == 503
    assert server.proc.wait(timeout=20) == 0
    thread.join(timeout=20)
    assert not thread.is_alive()
    server.stop()

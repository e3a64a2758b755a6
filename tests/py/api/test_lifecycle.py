"""Server lifecycle: SIGTERM drains running requests then exits 0; a full waiting queue answers 503."""
import json
import signal
import threading
import time
import urllib.error
import urllib.request

from k2_api_server import TINY, Server


def test_sigterm_drains_running_requests(tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"prompt_contains": "", "text": " tick" * 100, "delay_ms": 20}]))
    server = Server([str(TINY), "--test-scripted-output", str(script), "--served-model-name", "drain"],
                    env={"K2_ENABLE_TEST_MODEL": "1"}, log_name="drain")
    result = {}

    def request():
        body = json.dumps({"model": "drain", "prompt": "go", "max_tokens": 40}).encode()
        req = urllib.request.Request(server.base + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        result["response"] = json.loads(urllib.request.urlopen(req, timeout=60).read())

    thread = threading.Thread(target=request)
    thread.start()
    time.sleep(0.3)  # 40 steps of 20 ms: the request is running now
    server.proc.send_signal(signal.SIGTERM)
    thread.join(timeout=60)
    assert server.proc.wait(timeout=30) == 0, server.log_text()
    choice = result["response"]["choices"][0]
    assert choice["finish_reason"] == "length"
    assert result["response"]["usage"]["completion_tokens"] == 40  # all of them, not cut by the shutdown
    assert (" tick" * 100).startswith(choice["text"]) and len(choice["text"]) > 40
    assert "draining 1 running request" in server.log_text()
    server.stop()


def test_full_waiting_queue_is_503(tmp_path):
    """A bounded waiting queue: beyond --max-num-queued-reqs the answer is 503 with a message (never unbounded)."""
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"prompt_contains": "", "text": " tick" * 100, "delay_ms": 20}]))
    server = Server([str(TINY), "--test-scripted-output", str(script), "--served-model-name", "queue",
                     "--max-num-seqs", "1", "--max-num-queued-reqs", "1"],
                    env={"K2_ENABLE_TEST_MODEL": "1"}, log_name="queue")
    statuses, bodies = [], []

    def request():
        body = json.dumps({"model": "queue", "prompt": "go", "max_tokens": 10}).encode()
        req = urllib.request.Request(server.base + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                statuses.append(r.status)
        except urllib.error.HTTPError as e:
            statuses.append(e.code)
            bodies.append(json.loads(e.read()))

    threads = [threading.Thread(target=request) for _ in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join(timeout=60)
    assert server.stop() == 0
    assert statuses.count(200) >= 2 and 503 in statuses, statuses
    error = bodies[0]["error"]
    assert error["code"] == 503 and "overloaded" in error["message"]

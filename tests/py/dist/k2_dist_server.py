"""Helpers of the parallel serving tests: start `k2 serve` (env K2_BIN) with parallel flags on the tiny model, wait
for /health, send completions, stop it, and find its rank processes."""
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
TINY = REPO / "tests" / "fixtures" / "tiny-kimi-k2"
GOLDEN = json.loads((TINY / "golden.json").read_text())


def k2_bin():
    path = os.environ.get("K2_BIN")
    if not path or not os.path.exists(path):
        pytest.fail(f"K2_BIN={path!r} is not the built k2 binary; scripts/test sets it")
    return path


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_pair(host="127.0.0.1"):
    """P with P + 1 also free (rendezvous and control of a parallel job)."""
    for _ in range(200):
        port = free_port(host)
        try:
            with socket.socket() as s:
                s.bind((host, port + 1))
            return port
        except OSError:
            continue
    pytest.fail("no free port pair")


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


class Serve:
    """One `k2 serve` process; `headless` ones have no HTTP port."""

    def __init__(self, args, name, headless=False, host="127.0.0.1", env=None):
        self.port = None if headless else free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"k2-dist-{name}-{os.getpid()}.log"
        self.log = open(self.log_path, "w")
        cmd = [k2_bin(), "serve", str(TINY), *args, "--host", host]
        if not headless:
            cmd += ["--port", str(self.port), "--served-model-name", "tiny", "--max-model-len", "256",
                    "--disable-log-stats"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def log_text(self):
        self.log.flush()
        return self.log_path.read_text()

    def health(self):
        try:
            with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, ConnectionError, OSError):
            return None

    def wait_healthy(self, timeout=90):
        deadline = time.time() + timeout
        saw_503 = False
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"k2 serve exited with {self.proc.returncode}:\n{self.log_text()}")
            status = self.health()
            saw_503 = saw_503 or status == 503
            if status == 200:
                return saw_503
            time.sleep(0.05)
        pytest.fail(f"k2 serve did not become healthy:\n{self.log_text()}")

    def post(self, path, body, timeout=120):
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def get(self, path):
        with urllib.request.urlopen(self.base + path, timeout=10) as r:
            return r.read().decode()

    def rank_pids(self):
        """{rank: pid} of the worker processes this server started (its log says "started rank R (pid P)")."""
        return {int(r): int(p) for r, p in re.findall(r"started rank (\d+) \(pid (\d+)\)", self.log_text())}

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"k2 serve did not stop within {timeout} s:\n{self.log_text()}")
        finally:
            self.log.close()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

"""Helpers for the `k2 bench serve` tests: running the benchmark, the fake server, and checking the printed
block against vLLM's print statements (vllm/benchmarks/serve.py, reference/vllm.md §4.6)."""
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
TINY = REPO / "tests" / "fixtures" / "tiny-kimi-k2"
HERE = pathlib.Path(__file__).resolve().parent

# vLLM's saved-result keys (newer serve.py) that must be present whatever the options.
VLLM_RESULT_KEYS = [
    "date", "endpoint_type", "label", "model_id", "tokenizer_id", "num_prompts", "request_rate", "burstiness",
    "max_concurrency", "duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
    "request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
    "max_output_tokens_per_s", "max_concurrent_requests"]
DETAILED_KEYS = ["input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors"]
METRICS = [("ttft", "TTFT", "Time to First Token"), ("tpot", "TPOT", "Time per Output Token (excl. 1st token)"),
           ("itl", "ITL", "Inter-token Latency"), ("e2el", "E2EL", "End-to-end Latency")]


def k2_bin():
    path = os.environ.get("K2_BIN")
    if not path:
        pytest.fail("K2_BIN is not set (path to the built k2 binary); scripts/test sets it")
    return path


def run_bench(args, env=None, check=True, timeout=300):
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([k2_bin(), "bench", "serve", *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"k2 bench serve failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


class FakeServer:
    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "fake_openai_server.py"), "--model-root",
                                      str(TINY), *args], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            pytest.fail(f"fake server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.base = f"http://127.0.0.1:{self.port}"

    def requests(self):
        import urllib.request
        with urllib.request.urlopen(self.base + "/debug/requests", timeout=10) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def expected_lines(*, rate, max_concurrency=None, goodput=False, metrics=("ttft", "tpot", "itl"),
                   percentiles=("99",)):
    """(label, kind) in vLLM's order; kind: 'int', 'float', or 'rule' for header/separator lines."""
    lines = [("{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="="), "rule"),
             ("Successful requests:", "int"), ("Failed requests:", "int")]
    if max_concurrency is not None:
        lines.append(("Maximum request concurrency:", "int"))
    if rate != float("inf"):
        lines.append(("Request rate configured (RPS):", "float"))
    lines += [("Benchmark duration (s):", "float"), ("Total input tokens:", "int"),
              ("Total generated tokens:", "int"), ("Request throughput (req/s):", "float")]
    if goodput:
        lines.append(("Request goodput (req/s):", "float"))
    lines += [("Output token throughput (tok/s):", "float"), ("Peak output token throughput (tok/s):", "float"),
              ("Peak concurrent requests:", "float"), ("Total token throughput (tok/s):", "float")]
    for key, name, header in METRICS:
        if key not in metrics:
            continue
        lines.append(("{s:{c}^{n}}".format(s=header, n=50, c="-"), "rule"))
        lines += [(f"Mean {name} (ms):", "float"), (f"Median {name} (ms):", "float")]
        lines += [(f"P{p} {name} (ms):", "float") for p in percentiles]
    lines.append(("=" * 50, "rule"))
    return lines


def check_block(stdout, **kwargs):
    """Finds the result block in stdout and checks every line's label, order and formatting against vLLM's
    format strings ("{:<40} {:<10}" for ints, "{:<40} {:<10.2f}" for floats). Returns {label: value}."""
    lines = stdout.splitlines()
    start = lines.index("============ Serving Benchmark Result ============")
    expected = expected_lines(**kwargs)
    block = lines[start:start + len(expected)]
    assert len(block) == len(expected), stdout
    values = {}
    for line, (label, kind) in zip(block, expected):
        if kind == "rule":
            assert line == label
            continue
        pattern = r"\d+" if kind == "int" else r"-?\d+\.\d\d"
        match = re.fullmatch(re.escape(label) + r" +(" + pattern + r") *", line)
        assert match, f"line {line!r} does not match {label!r} ({kind})"
        text = match.group(1)
        value = int(text) if kind == "int" else float(text)
        # Re-format with vLLM's format string: padding must agree to the character.
        assert line == ("{:<40} {:<10}".format(label, value) if kind == "int"
                        else "{:<40} {:<10.2f}".format(label, value)), line
        values[label] = value
    return values


def load_result(result_dir):
    files = list(pathlib.Path(result_dir).glob("*.json"))
    assert len(files) == 1, files
    return files[0], json.loads(files[0].read_text())


def wait_until(predicate, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class K2Server:
    """`k2 serve` on the tiny model, on a free loopback port; waits for /health, stops with SIGTERM."""

    def __init__(self, *args, timeout=180, env=None):
        import signal  # noqa: F401
        import urllib.request
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"k2-bench-serve-{self.port}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([k2_bin(), "serve", str(TINY), *args, "--host", "127.0.0.1", "--port",
                                      str(self.port)], stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

        def healthy():
            if self.proc.poll() is not None:
                pytest.fail(f"k2 serve exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        if not wait_until(healthy, timeout):
            self.stop()
            pytest.fail(f"k2 serve did not become healthy:\n{self.log_path.read_text()}")

    def stop(self):
        import signal
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def compare_with_openai_client(base_url, tmp_path, num_prompts, max_tokens, rounds=1, prompt_repeats=8,
                               max_concurrency=None):
    """Runs k2 bench serve and the openai-package client one after the other on the same prompts (a custom
    JSONL dataset, rate inf, the same --max-concurrency, ignore_eos and max_tokens); returns both
    measurements."""
    concurrency = ["--max-concurrency", str(max_concurrency)] if max_concurrency else []
    prompts = tmp_path / "prompts.jsonl"
    with open(prompts, "w") as f:
        for i in range(num_prompts):
            f.write(json.dumps({"prompt": f"Request {i}: " + "the quick brown fox jumps over the lazy dog " * prompt_repeats})
                    + "\n")
    k2_runs = []
    for round_idx in range(rounds):
        out_dir = tmp_path / f"k2-{round_idx}"
        run_bench(["--base-url", base_url, "--tokenizer", str(TINY), "--dataset-name", "custom",
                   "--dataset-path", str(prompts), "--skip-chat-template", "--custom-output-len", str(max_tokens),
                   "--num-prompts", str(num_prompts), "--ignore-eos", "--save-result", "--result-dir",
                   str(out_dir), "--disable-tqdm", *concurrency])
        k2_runs.append(load_result(out_dir)[1])
    proc = subprocess.run([sys.executable, str(HERE / "openai_client_bench.py"), "--base-url", base_url,
                           "--prompts", str(prompts), "--max-tokens", str(max_tokens), "--rounds", str(rounds), *concurrency],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    client_runs = json.loads(proc.stdout)
    return k2_runs, client_runs


def check_agreement(k2_runs, client_runs, num_prompts, max_tokens):
    """Both clients completed the same work; the best round of each (highest output throughput, lowest median
    TTFT: the one least disturbed by other processes on the machine) agree within 5%."""
    for k2, client in zip(k2_runs, client_runs):
        assert k2["completed"] == client["completed"] == num_prompts
        assert k2["total_output_tokens"] == client["total_output_tokens"] == num_prompts * max_tokens
    k2_tput = max(run["output_throughput"] for run in k2_runs)
    client_tput = max(run["output_throughput"] for run in client_runs)
    k2_ttft = min(run["median_ttft_ms"] for run in k2_runs)
    client_ttft = min(run["median_ttft_ms"] for run in client_runs)
    summary = f"k2 {k2_tput:.1f} tok/s, {k2_ttft:.1f} ms; openai client {client_tput:.1f} tok/s, {client_ttft:.1f} ms"
    print(summary)
    assert k2_tput == pytest.approx(client_tput, rel=0.05), summary
    assert k2_ttft == pytest.approx(client_ttft, rel=0.05), summary


def compare_side_by_side(base_url, tmp_path, num_prompts, max_tokens, rounds, prompt_repeats, max_concurrency=1,
                         alternate=False):
    """Runs `k2 bench serve` and the openai-package client at the same time against one server, round by
    round: the client waits (after its warm-up) until k2 prints its last line before the measured run, so both
    measure the same stretch of the server's run under the same machine load. Run one after the other instead,
    the 2-core machine's load from other processes moved each side's numbers by up to 2x between rounds.
    alternate=True runs them in turns instead (k2's round, then the client's, and so on): for TTFT, which
    side by side depends on whose request reaches the server first.
    Both send the same prompts (the server must run with prefix caching off, so neither gets the other's cache
    hits). Returns both measurements."""
    prompts = tmp_path / "prompts.jsonl"
    with open(prompts, "w") as f:
        for i in range(num_prompts):
            f.write(json.dumps({"prompt": f"Request {i}: " + "the quick brown fox jumps over the lazy dog "
                                * prompt_repeats}) + "\n")
    limits = ["--max-concurrency", str(max_concurrency)] if max_concurrency else []
    client = subprocess.Popen([sys.executable, str(HERE / "openai_client_bench.py"), "--base-url", base_url,
                               "--prompts", str(prompts), "--max-tokens", str(max_tokens), "--rounds", str(rounds),
                               "--wait-for-go", *limits],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    k2_runs = []
    try:
        for round_idx in range(rounds):
            noise = []
            while (line := client.stderr.readline()) and line.strip() != "READY":
                noise.append(line)  # e.g. a library warning
            assert line, "the openai client exited before its round:\n" + "".join(noise)
            out_dir = tmp_path / f"k2-{round_idx}"
            bench = subprocess.Popen(
                [k2_bin(), "bench", "serve", "--base-url", base_url, "--tokenizer", str(TINY), "--dataset-name",
                 "custom", "--dataset-path", str(prompts), "--skip-chat-template", "--custom-output-len",
                 str(max_tokens), "--num-prompts", str(num_prompts), "--ignore-eos", "--save-result",
                 "--save-detailed", "--result-dir", str(out_dir), "--disable-tqdm", *limits],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            output = []
            for line in bench.stdout:
                output.append(line)
                if line.startswith("Maximum request concurrency:") and not alternate:
                    client.stdin.write("go\n")  # k2 flushed this line right before its run starts
                    client.stdin.flush()
                    break
            output += bench.stdout.readlines()
            assert bench.wait(timeout=300) == 0, "".join(output)
            if alternate:
                client.stdin.write("go\n")  # the client's round right after k2's, on a quiet server
                client.stdin.flush()
            k2_runs.append(load_result(out_dir)[1])
        stdout, stderr = client.communicate(timeout=300)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 0, stderr
    return k2_runs, json.loads(stdout)


def check_side_by_side(k2_runs, client_runs, num_prompts, max_tokens, metrics=("throughput", "ttft")):
    """Pooled over the rounds: output throughput (all tokens / all measured time) and the median TTFT of every
    request agree within 5% (those named in metrics)."""
    for k2, client in zip(k2_runs, client_runs):
        assert k2["completed"] == client["completed"] == num_prompts
        assert k2["total_output_tokens"] == client["total_output_tokens"] == num_prompts * max_tokens
    import numpy as np
    k2_tput = sum(r["total_output_tokens"] for r in k2_runs) / sum(r["duration"] for r in k2_runs)
    client_tput = sum(r["total_output_tokens"] for r in client_runs) / sum(r["duration"] for r in client_runs)
    k2_ttft = float(np.median([t for r in k2_runs for t in r["ttfts"]])) * 1000
    client_ttft = float(np.median([t for r in client_runs for t in r["ttfts"]])) * 1000
    rounds = "; ".join(f"{k['output_throughput']:.1f}/{c['output_throughput']:.1f} tok/s "
                       f"{k['median_ttft_ms']:.0f}/{c['median_ttft_ms']:.0f} ms" for k, c in zip(k2_runs, client_runs))
    summary = (f"k2 {k2_tput:.1f} tok/s, {k2_ttft:.1f} ms; openai client {client_tput:.1f} tok/s, "
               f"{client_ttft:.1f} ms (rounds k2/client: {rounds})")
    print(summary)
    if "throughput" in metrics:
        assert k2_tput == pytest.approx(client_tput, rel=0.05), summary
    if "ttft" in metrics:
        assert k2_ttft == pytest.approx(client_ttft, rel=0.05), summary

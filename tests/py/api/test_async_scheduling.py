"""`k2 serve --async-scheduling` (vLLM's flag) on the tiny model: the flag reaches the engine, and streaming through
the official openai client gives the transformers goldens (tests/fixtures/tiny-kimi-k2/golden.json) for concurrent
requests, ends on a stop string mid-stream, and survives a client that hangs up mid-stream.
"""
import json
import pathlib
import threading
import urllib.request

import openai
import pytest

from k2_api_server import API_KEY, TINY, Server

GOLDEN = json.loads((TINY / "golden.json").read_text())


@pytest.fixture(scope="module")
def server():
    # 8 KV blocks (512 tokens) and 4 sequences per step: the golden prompts queue and preempt each other.
    srv = Server([str(TINY), "--served-model-name", "tiny", "--api-key", API_KEY, "--max-model-len", "384",
                  "--num-gpu-blocks-override", "8", "--max-num-seqs", "4", "--async-scheduling"],
                 log_name="async-sched")
    yield srv
    code = srv.stop()
    assert code == 0, srv.log_text()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def detokenize(server, ids):
    req = urllib.request.Request(server.base + "/detokenize", data=json.dumps({"tokens": ids}).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req).read())["prompt"]


def stream_text(client, **kwargs):
    text, finish = "", None
    for chunk in client.completions.create(model="tiny", stream=True, **kwargs):
        if chunk.choices:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


def test_the_flag_reaches_the_engine(server):
    assert "async scheduling" in pathlib.Path(server.log_path).read_text()


def test_concurrent_streams_match_the_goldens(server, client):
    prompts = GOLDEN["prompts"]
    results = [None] * len(prompts)

    def run(i):
        # /detokenize keeps special tokens (a golden continuation has one), so the completion must too.
        results[i] = stream_text(client, prompt=prompts[i]["ids"], max_tokens=12, temperature=0,
                                 extra_body={"ignore_eos": True, "skip_special_tokens": False})

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, prompt in enumerate(prompts):
        assert results[i] == (detokenize(server, prompt["greedy_12"]), "length"), f"prompt {i}"


def test_stop_string_ends_the_stream_mid_way(server, client):
    prompt = GOLDEN["prompts"][1]
    full = detokenize(server, prompt["greedy_12"])
    stop = full[len(full) // 2:len(full) // 2 + 3]
    assert len(stop) == 3
    text, finish = stream_text(client, prompt=prompt["ids"], max_tokens=12, temperature=0, stop=[stop],
                               extra_body={"ignore_eos": True})
    assert (text, finish) == (full[:full.index(stop)], "stop")


def test_a_client_hanging_up_mid_stream_aborts_only_its_request(server, client):
    prompt = GOLDEN["prompts"][0]
    stream = client.completions.create(model="tiny", prompt=prompt["ids"], max_tokens=300, temperature=0,
                                       stream=True, extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    text, finish = stream_text(client, prompt=prompt["ids"], max_tokens=12, temperature=0,
                               extra_body={"ignore_eos": True})
    assert (text, finish) == (detokenize(server, prompt["greedy_12"]), "length")

"""`k2 serve` as a job of processes (issue 9): every parallel layout on the tiny model must reproduce the
transformers float32 goldens of tests/fixtures/tiny-kimi-k2/golden.json (greedy_12 continuations, and the first
step's log-probabilities against the golden logits), also under concurrent mixed streaming / non-streaming
requests; a two-node DP+EP run on two loopback addresses; and a SIGKILLed worker ending the server.

References nobody here wrote: golden.json (transformers), vLLM's documented flags, SSE format and metric labels.
"""
import concurrent.futures
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from k2_dist_server import GOLDEN, TINY, Serve, alive, free_port_pair

PROMPTS = GOLDEN["prompts"]


def detokenize(server, ids):
    return server.post("/detokenize", {"tokens": ids})["prompt"]


def complete(server, prompt, stream=False, extra=None):
    body = {"model": "tiny", "prompt": prompt["ids"], "max_tokens": 12, "temperature": 0, "ignore_eos": True,
            "skip_special_tokens": False,
            "stream": stream, **(extra or {})}
    if not stream:
        return server.post("/v1/completions", body)["choices"][0]
    req = urllib.request.Request(server.base + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    text, finish = "", None
    with urllib.request.urlopen(req, timeout=120) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[len("data: "):])["choices"][0]
            text += choice["text"]
            finish = choice["finish_reason"] or finish
    return {"text": text, "finish_reason": finish}


def log_softmax(row):
    shifted = row - row.max()
    return shifted - np.log(np.exp(shifted).sum())


def check_logprobs(prompt, choice):
    """Golden logits through the sharded path: vLLM's prompt_logprobs ({token_id: {logprob, ...}} per position)
    score prompt token p + 1 under the golden row of position p, and the first sampled token's logprob is the
    maximum of the last row's log-softmax (tolerance as the API suite's prompt_logprobs test)."""
    rows = np.fromfile(TINY / prompt["logits_file"], dtype="<f4").reshape(prompt["logits_shape"]).astype(np.float64)
    ids, entries = prompt["ids"], choice["prompt_logprobs"]
    assert len(entries) == len(ids) and entries[0] is None
    checked = 0
    for r, pos in enumerate(prompt["logit_positions"]):
        expected = log_softmax(rows[r])
        if pos + 1 < len(ids):
            for token, entry in entries[pos + 1].items():
                assert entry["logprob"] == pytest.approx(expected[int(token)], abs=1e-3), f"position {pos + 1}"
                checked += 1
    assert prompt["logit_positions"][-1] == len(ids) - 1
    first = choice["logprobs"]["token_logprobs"][0]
    assert first == pytest.approx(log_softmax(rows[-1]).max(), abs=1e-3)
    return checked


def check_goldens(server):
    expected = [detokenize(server, p["greedy_12"]) for p in PROMPTS]
    checked = 0
    for prompt, want in zip(PROMPTS, expected):
        choice = complete(server, prompt, extra={"logprobs": 1, "prompt_logprobs": 3})
        assert choice["text"] == want, f"prompt of {len(prompt['ids'])} tokens"
        assert choice["finish_reason"] == "length"
        checked += check_logprobs(prompt, choice)
    assert checked > 100
    # Concurrent, mixed: every prompt twice streaming and twice not, all at once.
    jobs = [(i, stream) for i in range(len(PROMPTS)) for stream in (False, True, False, True)]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: complete(server, PROMPTS[job[0]], stream=job[1]), jobs))
    for (i, stream), choice in zip(jobs, results):
        assert choice["text"] == expected[i], f"prompt {i}, stream={stream}"
        assert choice["finish_reason"] == "length"


def engine_generation_tokens(server):
    """{engine label: vllm:generation_tokens_total} from /metrics, read with prometheus_client's parser; every
    family appears once (one # HELP / # TYPE) with a sample per DP engine, as vLLM labels them."""
    text = server.get("/metrics")
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)), "a metric family is declared twice"
    families = list(text_string_to_metric_families(text))
    (tokens,) = [f for f in families if f.name == "vllm:generation_tokens"]
    return {sample.labels["engine"]: sample.value for sample in tokens.samples if sample.name.endswith("_total")}


def post_with_header(server, value, body):
    req = urllib.request.Request(server.base + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "X-data-parallel-rank": value})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def check_pinned_requests(server, before):
    """vLLM's X-data-parallel-rank header: the request runs on that DP engine; bad values are a 400."""
    prompt = PROMPTS[0]
    body = {"model": "tiny", "prompt": prompt["ids"], "max_tokens": 12, "temperature": 0, "ignore_eos": True,
            "skip_special_tokens": False}
    for rank in ("1", "1", "0"):
        status, out = post_with_header(server, rank, body)
        assert status == 200 and out["choices"][0]["text"] == detokenize(server, prompt["greedy_12"])
    after = engine_generation_tokens(server)
    assert (after["0"] - before["0"], after["1"] - before["1"]) == (12, 24)
    status, out = post_with_header(server, "one", body)
    assert status == 400 and out["error"]["message"] == "Invalid X-data-parallel-rank header: one"
    status, out = post_with_header(server, "2", body)
    assert status == 400 and out["error"]["message"] == "data_parallel_rank 2 is out of range [0, 2)."


def stop_and_check(server, pids):
    assert server.stop() == 0, server.log_text()
    deadline = time.time() + 5
    while time.time() < deadline and any(alive(pid) for pid in pids.values()):
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids.values()), "worker processes outlived the server"


LAYOUTS = {
    "tp2": (["-tp", "2"], 2),
    "tp4": (["-tp", "4"], 4),
    "pp2": (["-pp", "2"], 2),
    "tp2_dcp2": (["-tp", "2", "-dcp", "2"], 2),
    "dp2_tp2_ep": (["-dp", "2", "-tp", "2", "--enable-expert-parallel"], 4),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_reproduces_the_goldens(layout):
    args, world = LAYOUTS[layout]
    server = Serve(args, layout)
    try:
        server.wait_healthy()
        log = server.log_text()
        assert f"world_size={world}" in log
        for rank in range(world):
            assert f"rank {rank} in world size {world} is assigned as" in log, log
        pids = server.rank_pids()
        assert sorted(pids) == list(range(1, world)), log
        check_goldens(server)
        if layout.startswith("dp2"):
            # Replica 1's leader shares the driver's host: its logits skip the control messages.
            assert "DP replica 1's logits go to the driver through shared memory" in log, log
            tokens = engine_generation_tokens(server)
            assert sorted(tokens) == ["0", "1"]
            assert tokens["0"] > 0 and tokens["1"] > 0, tokens  # both replicas served requests
            check_pinned_requests(server, tokens)
        stop_and_check(server, pids)
    finally:
        server.kill()


def test_two_nodes_on_two_loopback_addresses():
    """vLLM's multi-node DP+EP command shape: node 1 runs --headless with --data-parallel-start-rank 1 on
    127.0.0.2 and connects to node 0 at 127.0.0.1; requests to node 0 use both replicas."""
    rpc = free_port_pair()
    common = ["-dp", "2", "-dpl", "1", "-tp", "2", "--enable-expert-parallel", "--data-parallel-address",
              "127.0.0.1", "--data-parallel-rpc-port", str(rpc)]
    # Node 1 first: its ranks wait for node 0's rendezvous and control sockets.
    node1 = Serve(["--headless", "--data-parallel-start-rank", "1", *common], "node1", headless=True,
                  host="127.0.0.2")
    time.sleep(1)
    head = Serve(common, "node0")
    try:
        head.wait_healthy()
        assert "ranks 2, 3 from other nodes" in head.log_text()
        assert "Headless node: DP replicas [1, 2) = ranks 2, 3" in node1.log_text()
        # Node 0 made no segment for a replica it did not start: the logits travel in the messages.
        assert "DP replica 1's logits go to the driver in the control messages" in node1.log_text(), node1.log_text()
        assert sorted(head.rank_pids()) == [1]
        assert sorted(node1.rank_pids()) == [2, 3]
        check_goldens(head)
        tokens = engine_generation_tokens(head)
        assert tokens["0"] > 0 and tokens["1"] > 0, tokens
        assert head.stop() == 0, head.log_text()
        assert node1.proc.wait(timeout=15) == 0, node1.log_text()
    finally:
        head.kill()
        node1.kill()


def test_tensor_parallel_across_two_nodes():
    """vLLM's --nnodes/--node-rank shape: TP=2 with rank 0 on node 0 (127.0.0.1) and rank 1 on a headless node 1
    (127.0.0.2)."""
    port = free_port_pair()
    common = ["-tp", "2", "--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    head = Serve(common, "tp-node0")
    node1 = Serve(["--headless", "--node-rank", "1", *common], "tp-node1", headless=True, host="127.0.0.2")
    try:
        head.wait_healthy()
        assert "Headless node: node 1 of 2 = ranks 1 of world size 2" in node1.log_text()
        assert head.rank_pids() == {} and sorted(node1.rank_pids()) == [1]
        check_goldens(head)
        assert head.stop() == 0, head.log_text()
        assert node1.proc.wait(timeout=15) == 0, node1.log_text()
    finally:
        head.kill()
        node1.kill()


def test_killing_a_worker_ends_the_server_naming_the_rank():
    server = Serve(["-tp", "4"], "kill")
    try:
        server.wait_healthy()
        pids = server.rank_pids()
        assert sorted(pids) == [1, 2, 3]
        start = time.monotonic()
        os.kill(pids[2], signal.SIGKILL)
        statuses = wait_exit(server, start, 10)
        assert server.proc.returncode == 1
        assert 503 in statuses, statuses  # unhealthy before it went away
        assert 200 not in statuses[statuses.index(503):]
        log = server.log_text()
        assert f"rank 2 (pid {pids[2]}) exited with signal 9" in log, log
        time.sleep(0.5)
        assert not any(alive(pid) for pid in pids.values())
    finally:
        server.kill()


def wait_exit(server, start, limit):
    statuses = []
    while server.proc.poll() is None and time.monotonic() - start < limit + 5:
        statuses.append(server.health())
        time.sleep(0.05)
    elapsed = time.monotonic() - start
    assert server.proc.poll() is not None and elapsed < limit, f"still running after {elapsed:.1f} s"
    return statuses


def test_a_worker_load_error_reaches_the_driver_naming_the_rank():
    server = Serve(["-tp", "2"], "loadfail", env={"K2_ENABLE_TEST_MODEL": "1", "K2_TEST_FAIL_LOAD_RANK": "1"})
    try:
        statuses = wait_exit(server, time.monotonic(), 30)
        assert 200 not in statuses
        assert server.proc.returncode == 1
        log = server.log_text()
        pid = server.rank_pids()[1]
        assert re.search(rf"rank 1 \(pid {pid}\) failed: loading \S+tiny-kimi-k2: .*injected load failure", log), log
    finally:
        server.kill()


def test_killing_a_rank_on_the_headless_node_ends_both_nodes():
    rpc = free_port_pair()
    common = ["-dp", "2", "-dpl", "1", "--enable-expert-parallel", "--data-parallel-address", "127.0.0.1",
              "--data-parallel-rpc-port", str(rpc)]
    head = Serve(common, "node0-kill")
    node1 = Serve(["--headless", "--data-parallel-start-rank", "1", *common], "node1-kill", headless=True,
                  host="127.0.0.2")
    try:
        head.wait_healthy()
        pid = node1.rank_pids()[1]
        start = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        assert node1.proc.wait(timeout=10) == 1
        assert f"rank 1 (pid {pid}) exited with signal 9" in node1.log_text()
        statuses = wait_exit(head, start, 10)  # heartbeats stop: 5 s
        assert head.proc.returncode == 1
        assert 503 in statuses, statuses
        assert re.search(r"rank 1 \(pid \d+\) sent no heartbeat", head.log_text()), head.log_text()
    finally:
        head.kill()
        node1.kill()

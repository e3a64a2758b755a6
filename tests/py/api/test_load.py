"""Load on loopback (acceptance 3 and 4): 1,024 concurrent streams, /health latency under load, disconnects
that leave no running request and no used KV block. The scripted model echoes each prompt, so every
stream's text must be exactly its own prompt."""
import asyncio
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

NUM_STREAMS = 1024
NUM_NON_STREAMING = 4


def metric_values(text):
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name
            if "finished_reason" in sample.labels:
                key += ":" + sample.labels["finished_reason"]
            values[key] = sample.value
    return values


LOAD_CLIENT = Path(__file__).with_name("load_client.py")


def probe_health(base, stop, latencies):
    """Times /health over one keep-alive connection, every 20 ms, until `stop` is set."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    while not stop.is_set():
        started = time.perf_counter()
        conn.request("GET", "/health")
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        assert response.status == 200, response.status
        time.sleep(0.02)
    conn.close()


def test_1024_concurrent_streams_and_health_latency(scripted_server):
    # The streams come from a separate, lower-priority process (nice 10): on the 2-core CI machine a client
    # that takes every cycle it can would otherwise measure its own scheduling delays, not the server's.
    client = subprocess.Popen(["nice", "-n", "10", sys.executable, str(LOAD_CLIENT), scripted_server.base,
                               str(NUM_STREAMS)], stdout=subprocess.PIPE, text=True)
    stop, latencies = threading.Event(), []
    prober = threading.Thread(target=probe_health, args=(scripted_server.base, stop, latencies))
    prober.start()
    try:
        out, _ = client.communicate(timeout=300)
    finally:
        stop.set()
        prober.join()
    assert client.returncode == 0, out
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == NUM_STREAMS
    for prompt, text, finish, usage, done in results:
        assert done
        assert text == prompt, (prompt, text)  # only its own tokens, all of them, in order
        assert finish == "stop"
        assert usage["completion_tokens"] == usage["prompt_tokens"] + 1  # the echo, then EOS
    assert len(latencies) >= 5, f"only {len(latencies)} /health probes completed during the load"
    latencies.sort()
    print(f"/health under load: {len(latencies)} probes, median {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"max {latencies[-1] * 1000:.1f} ms")
    # Under scripts/test-sanitizers asan the instrumented server is several times slower (one probe of 80 took
    # 124 ms there once); the bound is the release build's, the other checks hold under ASan as they are.
    bound = 0.5 if "ASAN_OPTIONS" in os.environ else 0.1
    assert latencies[-1] < bound, f"/health latencies under load (s): {latencies}"


async def disconnect_mid_stream(base, num_clients):
    async def one(i):
        body = {"model": "scripted", "prompt": f"SLOW {i}", "max_tokens": 400, "stream": True}
        async with aiohttp.ClientSession() as session:
            async with session.post(base + "/v1/completions", json=body) as r:
                assert r.status == 200
                got = 0
                async for raw in r.content:
                    if raw.strip():
                        got += 1
                    if got >= 3:
                        break  # leaving the block closes the connection mid-stream
    async def one_non_streaming(i):
        # A non-streaming client that gives up: the closed connection must abort its request as well.
        body = {"model": "scripted", "prompt": f"SLOW quiet {i}", "max_tokens": 400}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
            try:
                async with session.post(base + "/v1/completions", json=body) as r:
                    await r.read()
            except asyncio.TimeoutError:
                return
        raise AssertionError("a 400-step scripted output finished within 0.3 s")

    await asyncio.gather(*(one(i) for i in range(num_clients)),
                         *(one_non_streaming(i) for i in range(NUM_NON_STREAMING)))


def test_disconnect_aborts_and_frees_blocks(scripted_server):
    before = metric_values(scripted_server.get("/metrics")[1])
    num_clients = 16
    started = time.time()
    asyncio.run(disconnect_mid_stream(scripted_server.base, num_clients))
    # The scripted outputs take 400 steps of 20 ms; only an abort ends them within a few seconds.
    deadline = time.time() + 5
    while True:
        now = metric_values(scripted_server.get("/metrics")[1])
        idle = (now["vllm:num_requests_running"] == 0 and now["vllm:num_requests_waiting"] == 0
                and now["k2:kv_cache_used_blocks"] == 0)
        if idle or time.time() > deadline:
            break
        time.sleep(0.05)
    assert idle, now
    assert time.time() - started < 8
    aborted = now.get("vllm:request_success_total:abort", 0) - before.get("vllm:request_success_total:abort", 0)
    assert aborted == num_clients + NUM_NON_STREAMING
    assert now["k2:http_requests_in_flight"] == 0

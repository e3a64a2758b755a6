"""The load of test_load.py, in its own process: NUM streaming completions at once against BASE; prints one JSON
line per stream ([prompt, text, finish_reason, usage, saw_done]). Run apart from the /health prober so the
prober's timings are the server's, not those of a busy client event loop in the same process."""
import asyncio
import json
import sys

import aiohttp


async def stream_one(session, base, i):
    prompt = f"Echo {i:04d} zq"
    body = {"model": "scripted", "prompt": prompt, "max_tokens": 16, "stream": True,
            "stream_options": {"include_usage": True}}
    text, finish, usage, done = "", None, None, False
    async with session.post(base + "/v1/completions", json=body) as r:
        assert r.status == 200, await r.text()
        async for raw in r.content:
            line = raw.decode().strip()
            if not line:
                continue
            assert line.startswith("data: "), line
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
                continue
            event = json.loads(data)
            assert "error" not in event, event
            for choice in event["choices"]:
                text += choice["text"]
                finish = choice["finish_reason"] or finish
            usage = event.get("usage") or usage
    return [prompt, text, finish, usage, done]


async def run_load(base, num):
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return await asyncio.gather(*(stream_one(session, base, i) for i in range(num)))


if __name__ == "__main__":
    for result in asyncio.run(run_load(sys.argv[1], int(sys.argv[2]))):
        print(json.dumps(result))

"""An independent benchmark client built on the official `openai` package (asyncio), used to cross-check
`k2 bench serve`. It sends the prompts of a JSONL file ({"prompt": ...} per line) at once (or at most
--max-concurrency at a time) as streamed completions with ignore_eos, and reports what vLLM's benchmark reports for the same run:

- output_throughput = sum(usage.completion_tokens) / wall time from the first dispatch to the last response,
- median_ttft_ms    = median over requests of (first chunk with non-empty choices - the moment the request
                      is handed to the HTTP transport, from an httpx request hook).

A warm-up round (every prompt, 1 token) runs first, as `k2 bench serve`'s initial test request does, so
neither side measures connection setup of a cold pool. Prints one JSON
list on stdout, one object per round.
"""
import argparse
import asyncio
import json
import os
import sys
import time
import uuid

import numpy as np
import openai


SEND_TIMES = {}


async def record_send_time(request):
    """httpx request hook: runs just before the request goes on the wire (vLLM's `st`, taken just before
    the POST), so the SDK's own request building is not counted as server latency."""
    SEND_TIMES[request.headers.get("x-request-id")] = time.perf_counter()


async def one_request(client, model, prompt, max_tokens):
    request_id = f"oai-{uuid.uuid4().hex}"
    ttft = None
    completion_tokens = 0
    # The streaming-response form hands over the raw SSE lines: the client's per-chunk model parsing would
    # otherwise be measured as server latency on a busy 2-core machine.
    async with client.completions.with_streaming_response.create(
            model=model, prompt=prompt, max_tokens=max_tokens, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True}, extra_headers={"x-request-id": request_id}) as response:
        async for line in response.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if chunk.get("choices"):
                if ttft is None:
                    ttft = time.perf_counter() - SEND_TIMES[request_id]
            elif chunk.get("usage"):
                completion_tokens = chunk["usage"]["completion_tokens"]
    return ttft, completion_tokens


async def run(args):
    prompts = [json.loads(line)["prompt"] for line in open(args.prompts, encoding="utf-8") if line.strip()]
    client = openai.AsyncOpenAI(base_url=args.base_url + "/v1", api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"),
                                max_retries=0, timeout=600,
                                http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [record_send_time]}))
    model = args.model or (await client.models.list()).data[0].id
    # Warm-up: one request per prompt, so the connection pool holds a connection for each concurrent stream.
    await asyncio.gather(*(one_request(client, model, p, 1) for p in prompts))
    # --max-concurrency as vLLM's (and k2's): a semaphore around each request.
    limit = asyncio.Semaphore(args.max_concurrency or len(prompts))

    async def limited(prompt):
        async with limit:
            return await one_request(client, model, prompt, args.max_tokens)

    runs = []
    for _ in range(args.rounds):
        if args.wait_for_go:
            # Side by side with `k2 bench serve` (k2_bench_util.compare_side_by_side): the round starts when the
            # driver says k2's round starts, so both measure the same stretch of the server's run.
            print("READY", file=sys.stderr, flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        start = time.perf_counter()
        results = await asyncio.gather(*(limited(p) for p in prompts))
        duration = time.perf_counter() - start
        ttfts = [r[0] for r in results]
        total_output = sum(r[1] for r in results)
        runs.append({"completed": len(results), "duration": duration, "total_output_tokens": total_output,
                     "output_throughput": total_output / duration,
                     "median_ttft_ms": float(np.median(ttfts)) * 1000, "ttfts": ttfts})
    print(json.dumps(runs))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", default="")
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--max-tokens", type=int, required=True)
    parser.add_argument("--max-concurrency", type=int, default=0, help="requests in flight (0: all)")
    parser.add_argument("--rounds", type=int, default=1, help="measured rounds; one JSON object per round")
    parser.add_argument("--wait-for-go", action="store_true",
                        help="before each round print READY on stderr and wait for a line on stdin")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

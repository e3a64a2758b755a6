"""A fake OpenAI-compatible streaming server with known timings, for testing `k2 bench serve` without a model.

Each completion streams `max_tokens` (or `max_completion_tokens`) SSE chunks: the first after --ttft-ms, the
rest --itl-ms apart, then a usage chunk and `data: [DONE]`, framed as vLLM frames them. Requests whose
x-request-id ends in an index i with i % --fail-every == --fail-every - 1 get an HTTP 500 error envelope.
Prints "PORT <n>" once listening. GET /debug/requests returns every request body and its headers.
"""
import argparse
import asyncio
import json
import re
import time

from aiohttp import web


def make_app(args):
    requests = []

    async def models(_request):
        return web.json_response({"object": "list", "data": [
            {"id": args.model_id, "object": "model", "created": 0, "owned_by": "fake", "root": args.model_root}]})

    async def debug_requests(_request):
        return web.json_response(requests)

    async def complete(request):
        body = await request.json()
        requests.append({"path": request.path, "body": body, "headers": {k.lower(): v for k, v in request.headers.items()}})
        match = re.search(r"(\d+)$", request.headers.get("x-request-id", ""))
        if args.fail_every and match and int(match.group(1)) % args.fail_every == args.fail_every - 1:
            return web.json_response({"error": {"message": "injected failure", "type": "InternalServerError",
                                                "param": None, "code": 500}}, status=500)
        chat = request.path.endswith("chat/completions")
        num_tokens = body.get("max_completion_tokens" if chat else "max_tokens") or 16
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        created = int(time.time())
        await asyncio.sleep(args.ttft_ms / 1000)
        for i in range(num_tokens):
            if i:
                await asyncio.sleep(args.itl_ms / 1000)
            if chat:
                choice = {"index": 0, "delta": {"content": f" t{i}"}, "logprobs": None, "finish_reason": None}
            else:
                choice = {"index": 0, "text": f" t{i}", "logprobs": None, "finish_reason": None}
            chunk = {"id": "cmpl-fake", "object": "chat.completion.chunk" if chat else "text_completion",
                     "created": created, "model": body.get("model"), "choices": [choice]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = {"id": "cmpl-fake", "created": created, "model": body.get("model"), "choices": [],
                 "usage": {"prompt_tokens": args.prompt_tokens, "completion_tokens": num_tokens,
                           "total_tokens": args.prompt_tokens + num_tokens}}
        if args.prompt_tokens < 0:
            del usage["usage"]["prompt_tokens"]
        await response.write(f"data: {json.dumps(usage)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_get("/debug/requests", debug_requests)
    app.router.add_post("/v1/completions", complete)
    app.router.add_post("/v1/chat/completions", complete)
    return app


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft-ms", type=float, default=100.0)
    parser.add_argument("--itl-ms", type=float, default=10.0)
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--prompt-tokens", type=int, default=-1, help="usage.prompt_tokens; -1: left out")
    parser.add_argument("--model-id", default="fake-model")
    parser.add_argument("--model-root", default="")
    args = parser.parse_args()
    runner = web.AppRunner(make_app(args))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = runner.addresses[0][1]
    print(f"PORT {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())

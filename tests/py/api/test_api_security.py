"""Issue 11 point 5 (security) at the API: with --api-key every /v1 route answers 401 without the key (the
comparison is constant-time in the server; what is tested here is that no route skips it), and no request field
reaches the filesystem or model loading: a `model` naming a checkpoint directory on this machine is just an unknown
model name (404), never loaded."""
import json
import urllib.error
import urllib.request

import pytest

from k2_api_server import API_KEY, TINY

V1_ROUTES = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/tiny", None),
    ("POST", "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi"}),
    ("POST", "/v1/embeddings", {"model": "tiny", "input": "hi"}),
    ("POST", "/v1/no-such-route", {}),
]


def call(server, method, path, body, key=None):
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(server.base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.parametrize("method,path,body", V1_ROUTES)
@pytest.mark.parametrize("key", [None, "wrong", API_KEY[:-1], API_KEY + "x"])
def test_every_v1_route_needs_the_key(tiny_server, method, path, body, key):
    status, payload = call(tiny_server, method, path, body, key)
    assert status == 401, (status, payload[:200])
    assert json.loads(payload) == {"error": "Unauthorized"}  # vLLM's AuthenticationMiddleware body


def test_the_right_key_opens_the_routes(tiny_server):
    assert call(tiny_server, "GET", "/v1/models", None, API_KEY)[0] == 200
    status, _ = call(tiny_server, "POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 1},
                     API_KEY)
    assert status == 200


@pytest.mark.parametrize("model", [str(TINY), str(TINY / "config.json"), "../tiny-kimi-k2", "file:///etc/passwd",
                                   "moonshotai/Kimi-K2-Instruct"])
def test_a_model_path_in_a_request_is_only_a_name(tiny_server, model):
    status, payload = call(tiny_server, "POST", "/v1/completions", {"model": model, "prompt": "hi", "max_tokens": 1},
                           API_KEY)
    assert status == 404, (status, payload[:200])
    assert "does not exist" in json.loads(payload)["error"]["message"]

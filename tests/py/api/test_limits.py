"""Input limits (issue 11 point 3): every bound on a request answers a 4xx with OpenAI's error envelope
({"error": {"message", "type", "param", "code"}}) through the official openai client or raw HTTP, fast, and
the server stays healthy. Messages are vLLM's where vLLM has the check (reference/vllm.md §2.3-2.5); the
bounds vLLM lacks (stop list, tools size, best_of > n) are k2's and listed in docs/hardening.md."""
import json
import time
import urllib.error
import urllib.request

import openai
import pytest

from k2_api_server import API_KEY, MAX_BODY_BYTES, MAX_MODEL_LEN, TINY, Server

MESSAGES = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.base + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def raw_post(server, path, data, headers=None):
    """POST raw bytes; returns (status, parsed JSON body)."""
    all_headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}", **(headers or {})}
    req = urllib.request.Request(server.base + path, data=data, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def check_envelope(body, code):
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"}, body
    assert error["code"] == code and error["message"], body
    return error


def bad_chat(client, message, param=None, **kwargs):
    kwargs.setdefault("max_tokens", 2)
    start = time.monotonic()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=kwargs.pop("messages", MESSAGES), **kwargs)
    assert time.monotonic() - start < 5  # refused before any expensive work
    error = check_envelope(e.value.body if "error" in e.value.body else {"error": e.value.body}, 400)
    assert message in error["message"], error
    if param is not None:
        assert error["param"] == param, error
    return error


def bad_completion(client, message, param=None, **kwargs):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", **{"prompt": "Hello", "max_tokens": 2, **kwargs})
    error = check_envelope(e.value.body if "error" in e.value.body else {"error": e.value.body}, 400)
    assert message in error["message"], error
    if param is not None:
        assert error["param"] == param, error


def test_body_size_is_413_with_the_envelope(tiny_server):
    data = json.dumps({"model": "tiny", "prompt": "x" * (MAX_BODY_BYTES + 1), "max_tokens": 2}).encode()
    status, body = raw_post(tiny_server, "/v1/completions", data)
    assert status == 413
    assert "--max-request-body-bytes" in check_envelope(body, 413)["message"]
    assert tiny_server.get("/health")[0] == 200


def test_header_size_is_431(tiny_server):
    status, body = raw_post(tiny_server, "/v1/completions", b"{}", headers={"X-Padding": "a" * 100_000})
    assert status == 431
    check_envelope(body, 431)
    assert tiny_server.get("/health")[0] == 200


def test_prompt_length_against_max_model_len(client):
    bad_completion(client, f"maximum context length is {MAX_MODEL_LEN} tokens. However, your request has "
                   f"{MAX_MODEL_LEN} input tokens", prompt=[5] * MAX_MODEL_LEN)
    bad_chat(client, f"maximum context length is {MAX_MODEL_LEN} tokens",
             messages=[{"role": "user", "content": "word " * (2 * MAX_MODEL_LEN)}])
    # One token short of the limit is fine with max_tokens 1.
    assert client.completions.create(model="tiny", prompt=[5] * (MAX_MODEL_LEN - 1), max_tokens=1).usage \
        .prompt_tokens == MAX_MODEL_LEN - 1


@pytest.mark.parametrize("value", [0, -1])
def test_max_tokens_not_positive(client, value):
    bad_chat(client, f"max_tokens must be at least 1, got {value}.", "max_tokens", max_tokens=value)
    bad_chat(client, f"max_tokens must be at least 1, got {value}.", "max_tokens", max_tokens=None,
             max_completion_tokens=value)
    bad_completion(client, f"max_tokens must be at least 1, got {value}.", "max_tokens", max_tokens=value)


def test_max_tokens_too_large(client):
    bad_chat(client, "'max_tokens' or 'max_completion_tokens' is too large: 512.", max_tokens=MAX_MODEL_LEN)
    bad_completion(client, "'max_tokens' or 'max_completion_tokens' is too large", max_tokens=MAX_MODEL_LEN)
    # Beyond 32 bits: refused as out of range, not wrapped into a small or negative number.
    bad_chat(client, "'max_tokens' is out of range", "max_tokens", max_tokens=2**40)
    bad_completion(client, "'max_tokens' is out of range", "max_tokens", max_tokens=2**63 - 1)


def test_n_and_best_of_bounds(client):
    bad_chat(client, "n must be at least 1, got 0.", "n", n=0)
    bad_chat(client, "n must be at most 128, got 129.", "n", n=129)
    bad_completion(client, "n must be at most 128, got 100000.", "n", n=100000)
    bad_completion(client, "best_of must be greater than or equal to n, got n=2 and best_of=1.", "best_of", n=2,
                   best_of=1)
    bad_completion(client, "best_of > n is not supported", "best_of", best_of=3)
    bad_chat(client, "best_of > n is not supported", "best_of", extra_body={"best_of": 2})
    response = client.completions.create(model="tiny", prompt="Hello", max_tokens=2, n=2, best_of=2)
    assert len(response.choices) == 2


def test_logprobs_above_max_logprobs(client):
    bad_chat(client, "Requested sample logprobs of 21, which is greater than max allowed: 20", "top_logprobs",
             logprobs=True, top_logprobs=21)
    bad_completion(client, "Requested sample logprobs of 21, which is greater than max allowed: 20", "logprobs",
                   logprobs=21)
    bad_completion(client, "Requested prompt logprobs of 21, which is greater than max allowed: 20",
                   "prompt_logprobs", extra_body={"prompt_logprobs": 21})
    assert client.completions.create(model="tiny", prompt="Hello", max_tokens=1, logprobs=20).choices[0].logprobs


def test_deeply_nested_json(tiny_server):
    depth = 100_000
    data = b'{"model": "tiny", "prompt": "Hello", "x": ' + b"[" * depth + b"]" * depth + b"}"
    status, body = raw_post(tiny_server, "/v1/completions", data)
    assert status == 400
    assert "nests JSON deeper than 512 levels" in check_envelope(body, 400)["message"]
    # 500 levels inside an unknown field are fine (ignored like any unknown field).
    data = b'{"model": "tiny", "prompt": "Hello", "max_tokens": 1, "x": ' + b"[" * 500 + b"]" * 500 + b"}"
    assert raw_post(tiny_server, "/v1/completions", data)[0] == 200
    assert tiny_server.get("/health")[0] == 200


@pytest.mark.parametrize("text", [b"\xff\xfe", b"ab\xc3", b"\xed\xa0\x80", b"\\ud800 lone surrogate"])
def test_invalid_utf8_is_400(tiny_server, text):
    data = b'{"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "' + text + b'"}]}'
    status, body = raw_post(tiny_server, "/v1/chat/completions", data)
    assert status == 400
    message = check_envelope(body, 400)["message"]
    assert "not valid JSON" in message and ("UTF-8" in message or "surrogate" in message), message


def test_unknown_fields_are_ignored_like_vllm(client):
    """vLLM accepts unknown fields and only logs them; k2 ignores them the same way (same greedy output)."""
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, temperature=0)
    extra = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, temperature=0,
                                           extra_body={"no_such_field": {"nested": [1, 2]}, "another": None})
    assert extra.choices[0].message.content == plain.choices[0].message.content


def tool(i, description="d"):
    return {"type": "function", "function": {"name": f"f{i}", "description": description,
                                             "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def big_body_client():
    """The shared server takes 1 MiB bodies, less than the tools bound; this one takes 4 MiB."""
    server = Server([str(TINY), "--served-model-name", "tiny", "--max-model-len", str(MAX_MODEL_LEN),
                     "--max-request-body-bytes", "4M"], log_name="limits-big-body")
    yield openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=120)
    assert server.stop() == 0


def test_tools_too_many_or_too_large(client, big_body_client):
    bad_chat(client, "'tools' has 129 entries; at most 128 are allowed.", "tools",
             tools=[tool(i) for i in range(129)], tool_choice="none")
    bad_chat(big_body_client, "bytes of JSON; at most 1048576 are allowed.", "tools",
             tools=[tool(i, "x" * 20_000) for i in range(60)], tool_choice="none")
    # Within the bounds the size is checked by the prompt length like any other prompt text.
    bad_chat(client, f"maximum context length is {MAX_MODEL_LEN} tokens", tools=[tool(i, "y " * 2000)
                                                                                 for i in range(10)],
             tool_choice="none")


def test_stop_list_too_long(client):
    bad_chat(client, "'stop' has 129 strings; at most 128 are allowed.", "stop", stop=[f"s{i}" for i in range(129)])
    bad_completion(client, "'stop' has 100000 strings", "stop", stop=[f"s{i}" for i in range(100_000)])
    bad_chat(client, "a 'stop' string has 5000 bytes; at most 4096 are allowed.", "stop", stop=["z" * 5000])
    assert client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2,
                                          stop=[f"s{i}" for i in range(128)]).choices

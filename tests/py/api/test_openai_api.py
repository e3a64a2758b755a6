"""The OpenAI API of `k2 serve` on the tiny model, driven by the official openai client (acceptance 1)."""
import json
import urllib.request

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from k2_api_server import API_KEY, MAX_BODY_BYTES, MAX_MODEL_LEN

MESSAGES = [{"role": "user", "content": "Hello, who are you?"}]


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.base + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def test_models_lists_every_served_name(client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == ["tiny", "tiny-alias"]
    assert models.data[0].model_extra["max_model_len"] == MAX_MODEL_LEN


def test_chat_completion_length(client):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == "tiny"
    choice = r.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert r.usage.completion_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5


def test_alias_model_name_is_accepted(client):
    r = client.chat.completions.create(model="tiny-alias", messages=MESSAGES, max_tokens=2, temperature=0)
    assert r.model == "tiny"


def test_chat_prompt_tokens_match_tokenize(client, tiny_server):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1, temperature=0)
    body = json.dumps({"model": "tiny", "messages": MESSAGES}).encode()
    req = urllib.request.Request(tiny_server.base + "/tokenize", data=body, headers={"Content-Type": "application/json"})
    tok = json.loads(urllib.request.urlopen(req).read())
    assert tok["count"] == r.usage.prompt_tokens == len(tok["tokens"])
    assert tok["max_model_len"] == MAX_MODEL_LEN


def test_completion_prompt_forms(client):
    r = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=4, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 4
    as_list = client.completions.create(model="tiny", prompt=["The quick brown fox", "Hello"], max_tokens=4,
                                        temperature=0, extra_body={"ignore_eos": True})
    assert [c.index for c in as_list.choices] == [0, 1]
    assert as_list.choices[0].text == r.choices[0].text  # greedy: same prompt, same text
    ids = client.completions.create(model="tiny", prompt=[1, 2, 3, 4], max_tokens=3, temperature=0,
                                    extra_body={"ignore_eos": True})
    id_lists = client.completions.create(model="tiny", prompt=[[1, 2, 3, 4], [5, 6]], max_tokens=3, temperature=0,
                                         extra_body={"ignore_eos": True})
    assert ids.usage.prompt_tokens == 4
    assert id_lists.usage.prompt_tokens == 6
    assert id_lists.choices[0].text == ids.choices[0].text


def test_streaming_chat_with_usage_matches_non_streaming(client):
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0,
                                           extra_body={"ignore_eos": True})
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage.completion_tokens == 8
    assert usage_chunk.usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_completion(client):
    whole = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0,
                                      extra_body={"ignore_eos": True})
    chunks = list(client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0,
                                            stream=True, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_raw_sse_framing(tiny_server):
    body = json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 2, "stream": True, "ignore_eos": True,
                       "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(tiny_server.base + "/v1/completions", data=body, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(req) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] == 2
    assert "usage" not in payloads[0]


def test_n2_gives_two_choices(client):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, n=2, temperature=1.0, seed=7,
                                       extra_body={"ignore_eos": True})
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.usage.completion_tokens == 8
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, n=2, stream=True,
                                                 temperature=1.0, seed=7, extra_body={"ignore_eos": True}))
    texts = {0: "", 1: ""}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
    assert texts == {c.index: c.message.content for c in r.choices}


def test_stop_string(client):
    base = client.completions.create(model="tiny", prompt="The weather today", max_tokens=12, temperature=0,
                                     extra_body={"ignore_eos": True})
    text = base.choices[0].text
    # A stop string taken from the middle of the greedy output ends the output right before it.
    start = max(1, len(text) // 2)
    stop = text[start:start + 2]
    if len(stop) < 2 or not stop.strip():
        pytest.fail(f"greedy output too short for a stop string: {text!r}")
    stopped = client.completions.create(model="tiny", prompt="The weather today", max_tokens=12, temperature=0,
                                        stop=[stop], extra_body={"ignore_eos": True})
    choice = stopped.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.model_extra["stop_reason"] == stop
    assert choice.text == text[:text.index(stop)]


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True,
                                       top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        assert entry.bytes == list(entry.token.encode("utf-8", "replace")) or entry.bytes
        # Greedy: the sampled token is the most likely one.
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-4)
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob


def test_completion_logprobs(client):
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=3, temperature=0, logprobs=2,
                                  extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3
    assert all(len(t) <= 2 for t in lp.top_logprobs)
    assert lp.text_offset[0] == 0


def test_seed_reproducibility(client):
    def sample(seed):
        return client.completions.create(model="tiny", prompt="Tell me a story", max_tokens=8, temperature=1.0,
                                         seed=seed, extra_body={"ignore_eos": True}).choices[0].text
    assert sample(1234) == sample(1234)
    assert len({sample(s) for s in (1, 2, 3, 4)}) > 1


def test_health_version_detokenize(tiny_server):
    assert tiny_server.get("/health") == (200, "")
    status, body = tiny_server.get("/version")
    assert status == 200 and "version" in json.loads(body)
    req = urllib.request.Request(tiny_server.base + "/tokenize", data=json.dumps({"prompt": "Hello world"}).encode(),
                                 headers={"Content-Type": "application/json"})
    tokens = json.loads(urllib.request.urlopen(req).read())["tokens"]
    req = urllib.request.Request(tiny_server.base + "/detokenize", data=json.dumps({"tokens": tokens}).encode(),
                                 headers={"Content-Type": "application/json"})
    assert json.loads(urllib.request.urlopen(req).read()) == {"prompt": "Hello world"}


def test_metrics_parse_with_prometheus_client(client, tiny_server):
    client.completions.create(model="tiny", prompt="Hi", max_tokens=2, temperature=0)
    status, text = tiny_server.get("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prompt_tokens", "vllm:generation_tokens", "vllm:request_success",
                 "vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds", "vllm:num_preemptions"):
        assert name in families, name
    sample = families["vllm:generation_tokens"].samples[0]
    assert sample.labels["model_name"] == "tiny" and sample.labels["engine"] == "0"
    assert sample.value >= 2


# ---- errors, through the client's exceptions ----

def test_context_length_error(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt=[5] * (MAX_MODEL_LEN + 10), max_tokens=4)
    assert "maximum context length is 512 tokens" in str(e.value)
    assert e.value.status_code == 400
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=MAX_MODEL_LEN)
    assert "'max_tokens' or 'max_completion_tokens' is too large: 512" in str(e.value)


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=2)
    assert "The model `no-such-model` does not exist." in str(e.value)
    assert e.value.body["type"] == "NotFoundError" and e.value.body["code"] == 404


def test_wrong_or_missing_api_key_is_401(tiny_server):
    bad = openai.OpenAI(base_url=tiny_server.base + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
    # /health stays open, as in vLLM.
    assert tiny_server.get("/health")[0] == 200


def test_body_over_limit_is_413(client):
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model="tiny", prompt="x" * (MAX_BODY_BYTES + 100), max_tokens=2)
    assert e.value.status_code == 413


@pytest.mark.parametrize("kwargs,message", [
    (dict(tool_choice="none"), "When using `tool_choice`, `tools` must be set."),
    (dict(top_logprobs=2), "when using `top_logprobs`, `logprobs` must be set to true."),
    (dict(n=0), "n must be at least 1"),
    (dict(logprobs=True, top_logprobs=21), "Requested sample logprobs of 21, which is greater than max allowed: 20"),
    (dict(stream_options={"include_usage": True}), "Stream options can only be defined when `stream=True`."),
    (dict(temperature=-1), "temperature must be non-negative"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]),
     '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'),
])
def test_bad_requests_are_400(client, kwargs, message):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2, **kwargs)
    assert message in str(e.value)
    assert e.value.body["type"] == "BadRequestError"


def test_malformed_json_is_400(tiny_server):
    req = urllib.request.Request(tiny_server.base + "/v1/chat/completions", data=b"{not json",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 400
    assert json.loads(e.value.read())["error"]["code"] == 400

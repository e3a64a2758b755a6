"""logit_bias, prompt_logprobs and response_format through the official openai client, on the tiny model.

References nobody here wrote: the transformers float32 golden logits and greedy continuations of
tests/fixtures/tiny-kimi-k2/golden.json, and vLLM's documented request rules and response shapes.
"""
import json
import pathlib
import urllib.request

import numpy as np
import openai
import pytest

from k2_api_server import API_KEY

FIXTURE = pathlib.Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "tiny-kimi-k2"
GOLDEN = json.loads((FIXTURE / "golden.json").read_text())
MESSAGES = [{"role": "user", "content": "Hello, who are you?"}]


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.base + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def golden(index):
    prompt = GOLDEN["prompts"][index]
    rows = np.fromfile(FIXTURE / prompt["logits_file"], dtype="<f4").reshape(prompt["logits_shape"])
    return prompt, rows.astype(np.float64)


def log_softmax(row):
    shifted = row - row.max()
    return shifted - np.log(np.exp(shifted).sum())


def detokenize(server, ids):
    req = urllib.request.Request(server.base + "/detokenize", data=json.dumps({"tokens": ids}).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req).read())["prompt"]


# ---- logit_bias ----

def test_logit_bias_plus_100_forces_a_token(client, tiny_server):
    prompt, _ = golden(0)
    plain = client.completions.create(model="tiny", prompt=prompt["ids"], max_tokens=3, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert plain.choices[0].text == detokenize(tiny_server, prompt["greedy_12"][:3])
    forced = 1000
    assert forced not in prompt["greedy_12"][:3]
    r = client.completions.create(model="tiny", prompt=prompt["ids"], max_tokens=3, temperature=0,
                                  logit_bias={str(forced): 100}, extra_body={"ignore_eos": True})
    assert r.choices[0].text == detokenize(tiny_server, [forced] * 3)
    # Sampling too: +100 dwarfs every other logit of this model.
    r = client.completions.create(model="tiny", prompt=prompt["ids"], max_tokens=3, temperature=1.0, seed=5,
                                  logit_bias={str(forced): 100}, extra_body={"ignore_eos": True})
    assert r.choices[0].text == detokenize(tiny_server, [forced] * 3)


def test_logit_bias_minus_100_bans_the_greedy_token(client, tiny_server):
    prompt, rows = golden(0)
    order = np.argsort(-rows[-1])
    assert order[0] == prompt["greedy_12"][0]
    assert rows[-1][order[1]] - rows[-1][order[2]] > 1e-2  # the runner-up is unambiguous
    r = client.completions.create(model="tiny", prompt=prompt["ids"], max_tokens=1, temperature=0,
                                  logit_bias={str(order[0]): -100}, extra_body={"ignore_eos": True})
    assert r.choices[0].text == detokenize(tiny_server, [int(order[1])])


def test_logit_bias_in_chat(client, tiny_server):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2, temperature=0,
                                       logit_bias={"1200": 100}, extra_body={"ignore_eos": True})
    assert r.choices[0].message.content == detokenize(tiny_server, [1200, 1200])


@pytest.mark.parametrize("bias,message", [
    ({"4096": 1}, "token_id(s) [4096] in logit_bias contain out-of-vocab token ids. Vocabulary size: 4096"),
    ({"-3": 1}, "token_id(s) [-3] in logit_bias contain out-of-vocab token ids"),
    ({"hello": 1}, "Found token_id in logit_bias that is not an integer or string representing an integer"),
    ({"5": "high"}, "logit_bias"),
])
def test_logit_bias_errors_are_400(client, bias, message):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1, logit_bias=bias)
    assert message in str(e.value)
    assert e.value.body["param"] == "logit_bias"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="Hi", max_tokens=1, logit_bias=bias)


def test_logit_bias_values_are_clamped_like_vllm(client, tiny_server):
    # vLLM clamps to OpenAI's [-100, 100] instead of refusing; 1e6 acts as +100.
    r = client.completions.create(model="tiny", prompt="Hi", max_tokens=2, temperature=0,
                                  logit_bias={"1000": 1e6}, extra_body={"ignore_eos": True})
    assert r.choices[0].text == detokenize(tiny_server, [1000, 1000])


# ---- prompt_logprobs ----

def check_prompt_logprobs(entries, ids, rows, num_top):
    """entries: vLLM's list (None, then {token_id_str: {logprob, rank, decoded_token}}); rows[i] are the golden
    logits after prompt token i, so position i + 1 is scored by log_softmax(rows[i])."""
    assert len(entries) == len(ids)
    assert entries[0] is None
    for pos in range(1, len(ids)):
        expected = log_softmax(rows[pos - 1])
        entry = entries[pos]
        token = entry[str(ids[pos])]
        assert token["logprob"] == pytest.approx(expected[ids[pos]], abs=1e-3), f"position {pos}"
        ties = int((np.abs(expected - expected[ids[pos]]) <= 2e-3).sum())  # near-ties may rank either way
        assert abs(token["rank"] - (int((expected > expected[ids[pos]]).sum()) + 1)) < ties
        assert isinstance(token["decoded_token"], str)
        top = sorted((v["rank"], v["logprob"]) for v in entry.values() if v["rank"] <= num_top)
        assert [t[0] for t in top] == list(range(1, num_top + 1))
        assert [t[1] for t in top] == pytest.approx(list(np.sort(expected)[::-1][:num_top]), abs=1e-3)
        assert len(entry) in (num_top, num_top + 1)


def test_completion_prompt_logprobs_match_golden_logits(client):
    prompt, rows = golden(4)
    r = client.completions.create(model="tiny", prompt=prompt["ids"], max_tokens=1, temperature=0,
                                  extra_body={"prompt_logprobs": 3})
    check_prompt_logprobs(r.choices[0].model_extra["prompt_logprobs"], prompt["ids"], rows, 3)
    assert r.choices[0].logprobs is None


def test_prompt_logprobs_zero_gives_only_the_prompt_tokens(client):
    prompt, rows = golden(1)
    r = client.completions.create(model="tiny", prompt=prompt["ids"], max_tokens=1, n=2, temperature=0,
                                  extra_body={"prompt_logprobs": 0})
    for choice in r.choices:  # each choice of the prompt carries its prompt logprobs, as in vLLM
        entries = choice.model_extra["prompt_logprobs"]
        assert [list(e) for e in entries[1:]] == [[str(i)] for i in prompt["ids"][1:]]
        for pos in range(1, len(prompt["ids"])):
            assert entries[pos][str(prompt["ids"][pos])]["logprob"] == pytest.approx(
                log_softmax(rows[pos - 1])[prompt["ids"][pos]], abs=1e-3)


def test_chat_prompt_logprobs_cover_the_rendered_prompt(client, tiny_server):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1, temperature=0,
                                       extra_body={"prompt_logprobs": 1})
    entries = r.model_extra["prompt_logprobs"]
    assert len(entries) == r.usage.prompt_tokens and entries[0] is None
    req = urllib.request.Request(tiny_server.base + "/tokenize",
                                 data=json.dumps({"model": "tiny", "messages": MESSAGES}).encode(),
                                 headers={"Content-Type": "application/json"})
    ids = json.loads(urllib.request.urlopen(req).read())["tokens"]
    for pos in range(1, len(ids)):
        assert str(ids[pos]) in entries[pos]
        assert any(v["rank"] == 1 for v in entries[pos].values())
    # The same ids as a completions prompt give the same numbers.
    c = client.completions.create(model="tiny", prompt=ids, max_tokens=1, temperature=0,
                                  extra_body={"prompt_logprobs": 1})
    for ours, theirs in zip(entries[1:], c.choices[0].model_extra["prompt_logprobs"][1:]):
        assert ours.keys() == theirs.keys()
        for k in ours:
            assert ours[k]["logprob"] == pytest.approx(theirs[k]["logprob"], abs=1e-4)
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1, temperature=0)
    assert plain.model_extra["prompt_logprobs"] is None


@pytest.mark.parametrize("stream", [False, True])
def test_echo_with_logprobs_leads_with_the_prompt(client, stream):
    # vLLM: echo + logprobs=k also computes the prompt's logprobs; the first prompt token has none.
    prompt, rows = golden(1)
    ids = prompt["ids"]
    kwargs = dict(model="tiny", prompt=ids, max_tokens=2, temperature=0, echo=True, logprobs=1,
                  extra_body={"ignore_eos": True})
    if stream:
        chunks = list(client.completions.create(stream=True, **kwargs))
        lp = {"tokens": [], "token_logprobs": [], "top_logprobs": []}
        for c in chunks:
            if c.choices and c.choices[0].logprobs:
                for key in lp:
                    lp[key] += getattr(c.choices[0].logprobs, key)
    else:
        r = client.completions.create(**kwargs)
        lp = {key: getattr(r.choices[0].logprobs, key) for key in ("tokens", "token_logprobs", "top_logprobs")}
        check_prompt_logprobs(r.choices[0].model_extra["prompt_logprobs"], ids, rows, 1)
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(ids) + 2
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    for pos in range(1, len(ids)):
        assert lp["token_logprobs"][pos] == pytest.approx(log_softmax(rows[pos - 1])[ids[pos]], abs=1e-3)
        assert max(lp["top_logprobs"][pos].values()) == pytest.approx(log_softmax(rows[pos - 1]).max(), abs=1e-3)
    assert all(isinstance(v, float) for v in lp["token_logprobs"][len(ids):])


def test_prompt_logprobs_rules(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="Hi", max_tokens=1, extra_body={"prompt_logprobs": 21})
    assert "Requested prompt logprobs of 21, which is greater than max allowed: 20" in str(e.value)
    assert e.value.body["param"] == "prompt_logprobs"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1, stream=True,
                                       extra_body={"prompt_logprobs": 1})
    assert "`prompt_logprobs` are not available when `stream=True`." in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="Hi", max_tokens=1, extra_body={"prompt_logprobs": -2})
    assert "`prompt_logprobs` must be a positive value or -1." in str(e.value)
    # 0 with a stream is accepted (vLLM refuses only > 0 or -1); streamed chunks carry no prompt logprobs.
    chunks = list(client.completions.create(model="tiny", prompt="Hi", max_tokens=2, stream=True,
                                            extra_body={"prompt_logprobs": 0}))
    assert chunks and all("prompt_logprobs" not in (c.choices[0].model_extra if c.choices else {}) for c in chunks)


# ---- response_format ----

def test_response_format_text_is_accepted(client):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1,
                                       response_format={"type": "text"})
    assert r.choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize("fmt", [
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
])
def test_structured_output_is_refused_clearly(client, fmt):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1, response_format=fmt)
    assert f"response_format type '{fmt['type']}' is not supported" in str(e.value)
    assert e.value.body["param"] == "response_format"
    assert e.value.body["type"] == "BadRequestError"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="Hi", max_tokens=1, extra_body={"response_format": fmt})

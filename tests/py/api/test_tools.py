"""Kimi-K2 tool calling end to end on the scripted model (acceptance 2), with the official openai client.

The scripted outputs in conftest.SCRIPT are Kimi-K2's tool-call markup; the expected results are OpenAI's
tool-call objects with Kimi's native ids (reference/vllm.md §3).
"""
import json

import openai
import pytest

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a zone",
                                      "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}},
]


@pytest.fixture(scope="module")
def client(scripted_server):
    return openai.OpenAI(base_url=scripted_server.base + "/v1", api_key="unused", max_retries=0, timeout=60)


def ask(client, marker, **kwargs):
    return client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": f"{marker}: go"}],
                                          tools=TOOLS, max_tokens=200, **kwargs)


def reassemble(chunks):
    """What a streaming client rebuilds from the deltas: content, tool calls by index, finish reason."""
    content, calls, finish = "", {}, None
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for tc in choice.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    call["id"] = tc.id
                if tc.function and tc.function.name:
                    call["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    call["arguments"] += tc.function.arguments
            finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


def as_dicts(tool_calls):
    return [{"id": t.id, "name": t.function.name, "arguments": t.function.arguments} for t in tool_calls]


def test_single_call_with_content_before(client):
    r = ask(client, "case-single")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I'll check. "
    assert as_dicts(choice.message.tool_calls) == [
        {"id": "functions.get_weather:0", "name": "get_weather", "arguments": '{"city": "Beijing"}'}]
    assert choice.message.tool_calls[0].type == "function"


def test_parallel_calls(client):
    r = ask(client, "case-parallel")
    calls = as_dicts(r.choices[0].message.tool_calls)
    assert [c["id"] for c in calls] == ["functions.get_weather:0", "functions.get_weather:1"]
    assert [json.loads(c["arguments"]) for c in calls] == [{"city": "Beijing"}, {"city": "Shanghai"}]
    assert r.choices[0].message.content == "Checking both. "
    assert r.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("marker", ["case-single", "case-parallel", "case-plain"])
def test_streaming_reassembles_to_non_streaming(client, marker):
    whole = ask(client, marker).choices[0]
    chunks = list(ask(client, marker, stream=True))
    content, calls, finish = reassemble(chunks)
    assert content == (whole.message.content or "")
    assert calls == as_dicts(whole.message.tool_calls or [])
    assert finish == whole.finish_reason
    # No tool markup leaks into the content.
    assert "<|" not in content


def test_plain_text_with_tools_available(client):
    r = ask(client, "case-plain")
    assert r.choices[0].message.content == "Just text, no tools."
    assert not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "stop"


def test_tool_choice_named_forces_the_call(client):
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = ask(client, "case-named", tool_choice=named)
    assert as_dicts(r.choices[0].message.tool_calls) == [
        {"id": "functions.get_weather:0", "name": "get_weather", "arguments": '{"city": "Paris"}'}]
    assert r.choices[0].finish_reason == "tool_calls"
    content, calls, finish = reassemble(list(ask(client, "case-named", tool_choice=named, stream=True)))
    assert calls == as_dicts(r.choices[0].message.tool_calls)
    assert finish == "tool_calls"


def test_tool_choice_required(client):
    r = ask(client, "case-required", tool_choice="required")
    assert as_dicts(r.choices[0].message.tool_calls) == [
        {"id": "functions.get_time:0", "name": "get_time", "arguments": '{"zone": "UTC"}'}]
    content, calls, finish = reassemble(list(ask(client, "case-required", tool_choice="required", stream=True)))
    assert calls == as_dicts(r.choices[0].message.tool_calls) and finish == "tool_calls"


def test_named_tool_must_exist(client):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, "case-named", tool_choice={"type": "function", "function": {"name": "nope"}})
    assert "does not match any of the specified `tools`" in str(e.value)


def test_tool_result_round_trip(client):
    """A second turn carrying the call and its result renders through the chat template."""
    first = ask(client, "case-single").choices[0].message
    messages = [{"role": "user", "content": "case-plain: weather?"},
                {"role": "assistant", "content": first.content,
                 "tool_calls": [t.model_dump() for t in first.tool_calls]},
                {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "Sunny, 25 C"}]
    r = client.chat.completions.create(model="scripted", messages=messages, tools=TOOLS, max_tokens=50)
    assert r.choices[0].message.content == "Just text, no tools."


def test_stop_string_and_eos(client):
    r = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "case-stop"}],
                                       max_tokens=50, stop=["STOP"])
    assert r.choices[0].message.content == "alpha beta "
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].model_extra["stop_reason"] == "STOP"
    eos = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "case-stop"}],
                                         max_tokens=50)
    assert eos.choices[0].message.content == "alpha beta STOP gamma delta"
    assert eos.choices[0].finish_reason == "stop"

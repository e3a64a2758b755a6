"""Acceptance 3: k2's chat-template rendering against pip's jinja2 set up as transformers'
apply_chat_template (and as tests/fixtures/chat_templates was rendered): goldens, >= 200 generated
conversations per template, and a set of Jinja semantics snippets."""
import json
import random
import subprocess

import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from k2_tok import FIXTURES, k2_bin

TEMPLATES = sorted((FIXTURES / "chat_templates").glob("*.jinja"))
MODEL = FIXTURES / "tiny-kimi-k2"


def jinja_env():
    # The same configuration as /work/shared/tools/render_chat_goldens.py (transformers' settings).
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)

    def raise_exception(msg):
        raise Exception(msg)

    env.globals["raise_exception"] = raise_exception
    return env


def reference(template_src, request):
    kwargs = {"messages": request["messages"], "add_generation_prompt": request.get("add_generation_prompt", False),
              "tools": request.get("tools")}
    kwargs.update(request.get("chat_template_kwargs", {}))
    try:
        return {"prompt": jinja_env().from_string(template_src).render(**kwargs)}
    except Exception as e:  # noqa: BLE001 - any template error counts as an error render
        return {"error": str(e)}


def k2_render_all(template, requests):
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in requests)
    proc = subprocess.run([k2_bin(), "chat-template", str(MODEL), "--template", str(template), "--jsonl"],
                          input=payload.encode(), capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    out = [json.loads(line) for line in proc.stdout.decode("utf-8").split("\n") if line]
    assert len(out) == len(requests)
    return out


TEXTS = ["Hi", "", " ", "Hello, world!", "多语言：中文、日本語、한국어", "emoji 😀👍🏽 and \"quotes\" 'single'",
         "line1\nline2\n\n  indented", "tabs\tand\\backslashes", "<|im_end|> literal special text", "{{ not jinja }}",
         "{% raw %}", "数字 1234 and 3.14", "trailing spaces   ", "\u2028sep\u0085", "Ünïcödé", "a" * 300]
NAMES = ["alice", "bob", "用户", "get_weather"]


def rand_value(rng, depth=0):
    kinds = ["str", "int", "float", "bool", "null"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        return rng.choice(TEXTS)[:40]
    if kind == "int":
        return rng.choice([0, 1, -5, 42, 10**12])
    if kind == "float":
        return rng.choice([0.5, 1.0, -2.25, 1e-7, 3.14159, 1e20, 100.0])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [rand_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["a", "city", "说明", "n", "zeta", "Alpha"]) + str(k): rand_value(rng, depth + 1)
            for k in range(rng.randint(0, 3))}


def rand_tool(rng, k):
    props = {f"p{j}_{rng.choice(['city', '城市', 'unit'])}": {"type": rng.choice(["string", "number", "boolean"]),
                                                               "description": rng.choice(TEXTS)[:30]}
             for j in range(rng.randint(0, 3))}
    fn = {"name": f"tool_{k}", "description": rng.choice(TEXTS)[:50],
          "parameters": {"type": "object", "properties": props, "required": list(props)[:1]}}
    if rng.random() < 0.3:
        fn["extra"] = rand_value(rng)
    return {"type": "function", "function": fn}


def rand_content(rng):
    if rng.random() < 0.25:
        parts = []
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.15:
                parts.append({"type": "image_url", "image_url": {"url": "data:x"}})
            else:
                parts.append({"type": "text", "text": rng.choice(TEXTS)})
        return parts
    return rng.choice(TEXTS)


def rand_conversation(rng):
    messages = []
    if rng.random() < 0.4:
        messages.append({"role": "system", "content": rng.choice(TEXTS)})
    call_id = 0
    for _ in range(rng.randint(1, 4)):
        user = {"role": "user", "content": rand_content(rng)}
        if rng.random() < 0.2:
            user["name"] = rng.choice(NAMES)
        messages.append(user)
        if rng.random() < 0.7:
            assistant = {"role": "assistant", "content": rng.choice(TEXTS)}
            if rng.random() < 0.4:
                calls = []
                for _ in range(rng.randint(1, 2)):
                    args = rand_value(rng) if rng.random() < 0.5 else json.dumps(rand_value(rng), ensure_ascii=False)
                    if not isinstance(args, (str, dict)):
                        args = {"value": args}
                    calls.append({"id": f"functions.tool_{call_id}:{call_id}", "type": "function",
                                  "function": {"name": f"tool_{call_id}", "arguments": args}})
                    call_id += 1
                assistant["tool_calls"] = calls
                messages.append(assistant)
                for call in calls:
                    tool = {"role": "tool", "tool_call_id": call["id"], "content": rng.choice(TEXTS)}
                    if rng.random() < 0.5:
                        tool["name"] = call["function"]["name"]
                    messages.append(tool)
            else:
                messages.append(assistant)
    request = {"messages": messages, "add_generation_prompt": rng.random() < 0.7}
    if rng.random() < 0.5:
        request["tools"] = [rand_tool(rng, k) for k in range(rng.randint(1, 3))]
    return request


def test_goldens_via_cli():
    goldens = json.loads((FIXTURES / "chat_templates" / "goldens.json").read_text())
    by_template = {}
    for case in goldens["cases"]:
        by_template.setdefault(case["template"], []).append(case)
    for name, cases in by_template.items():
        requests = [{k: v for k, v in c["input"].items() if v is not None} for c in cases]
        got = k2_render_all(FIXTURES / "chat_templates" / name, requests)
        for case, result in zip(cases, got):
            assert result.get("prompt") == case["rendered"], (name, case["case"], result)


def test_200_generated_conversations_match_jinja2():
    rng = random.Random(1129)
    requests = [rand_conversation(rng) for _ in range(250)]
    for template in TEMPLATES:
        source = template.read_text()
        got = k2_render_all(template, requests)
        mismatches = []
        for request, result in zip(requests, got):
            ref = reference(source, request)
            if ("error" in ref) != ("error" in result) or ref.get("prompt") != result.get("prompt"):
                mismatches.append((request, ref, result))
        assert not mismatches, f"{template.name}: {len(mismatches)} mismatches; first: {mismatches[0]!r}"
        assert sum("prompt" in r for r in got) >= 200


SNIPPETS = [
    ("{% set x = 1 %}{% for i in [1,2] %}{% set x = i %}{{ x }}{% endfor %}{{ x }}", {}),
    ("{% set ns = namespace(n=0) %}{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}"
     "{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}", {}),
    ("{% for k, v in d.items() %}{{ loop.index }}:{{ k }}={{ v | tojson }}{% if not loop.last %}, {% endif %}"
     "{% endfor %}", {"d": {"b": [1, 2.5, None, True], "a": {"x": "é\"\n\u0001"}}}),
    ("  {% if true %}\n    yes\n  {% endif %}\n{{ 'a' ~ 1 ~ none }}|{{ [1,'b'] }}|{{ {'k': 'v'} }}|{{ 1.0 }}|"
     "{{ 7 // 2 }}|{{ -7 % 3 }}|{{ 'x' if false }}|{{ 2 ** 10 }}|{{ 7 / 2 }}", {}),
    ("{{ x.get('a', 'dflt') }} {{ x.b or 'no' }} {{ 'a' in x }} {{ x | length }} {{ '  t  ' | trim }}"
     "{{ y is defined }}{{ none is none }}{{ 3 is number }}{{ 'a' is string }}{{ x is mapping }}{{ [] is sequence }}",
     {"x": {"a": 1}}),
    ("{%- for m in msgs -%}\n  {%- if m is string -%}{{ m }}{%- continue -%}{%- endif -%}\n"
     "  [{{ m | tojson(indent=2) }}]\n{%- endfor %}", {"msgs": ["s", {"a": [1, {"b": 2}]}, []]}),
    ("{{ 'hello world'.split() }}{{ 'a,b'.split(',') }}{{ 'abc'[1:] }}{{ [1,2,3][::-1] }}{{ 'Hi'.upper() }}"
     "{{ ' x '.strip() }}{{ 'ab'.startswith('a') }}{{ messages[-1:] }}", {}),
    ("{% for m in messages if m.role != 'system' %}{{ loop.index0 }}{{ m.role }}{% else %}none{% endfor %}\n"
     "{#- a comment -#}\n  {% set y -%}\n  block {{ 1 + 2 }}\n{%- endset %}[{{ y }}]", {}),
    ("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('a') }} {{ greet('b', '?') }}"
     "{{ [1, 2, 3] | join('-') }}{{ none | default('d') }}{{ undefined_thing | default('u') }}{{ 'abc' | length }}", {}),
    ("{{ raise_exception('boom') if messages | length > 5 else 'fine' }}\n{% if a is not none and a.b is defined %}"
     "{{ a.b }}{% elif a %}{{ a | tojson }}{% else %}x{% endif %}", {"a": {"c": [1.5, "ü"]}}),
    ("{{ 1 }}\n{{ 2 }}\n{%+ if true %}k{% endif +%}\n  {%- if true %} m {% endif -%}  \n end\n", {}),
    ("{{ messages[0]['content'] | trim }}{{ messages[0].content[0:3] }}{{ messages | map(attribute='role') | list }}",
     {}),
    ("{{ raise_exception('bad role: ' ~ messages[0].role) }}", {}),
]


def test_jinja_semantics_snippets_match_jinja2(tmp_path):
    messages = [{"role": "system", "content": "  sys  "}, {"role": "user", "content": "hi"}]
    for k, (source, kwargs) in enumerate(SNIPPETS):
        path = tmp_path / f"snippet{k}.jinja"
        path.write_text(source)
        request = {"messages": messages, "chat_template_kwargs": kwargs}
        ref = reference(source, request)
        got = k2_render_all(path, [request])[0]
        assert ("error" in ref) == ("error" in got), (source, ref, got)
        assert ref.get("prompt") == got.get("prompt"), (source, ref, got)
        if "error" in ref:
            assert ref["error"] in got["error"], (source, ref, got)

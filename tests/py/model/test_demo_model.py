"""The demo model (models/kimi-k2-demo, made by scripts/demo_model/): `k2 generate` on the CPU backend reproduces
transformers' greedy continuations recorded when it was trained (golden.json), writes English (most words are
in /usr/share/dict/words, Debian's wamerican), is the default model, and its tokenizer and chat template agree
with pip's tiktoken and jinja2."""
import json
import os
import pathlib
import re
import subprocess
import sys

import jinja2
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
DEMO = ROOT / "models" / "kimi-k2-demo"
DICT = pathlib.Path("/usr/share/dict/words")
GOLDEN = json.loads((DEMO / "golden.json").read_text())

sys.path.insert(0, str(ROOT / "tests" / "py" / "tokenizer"))
from k2_tok import kimi_tiktoken  # noqa: E402  (pip's tiktoken set up as Kimi's tokenizer)


def k2_bin():
    path = os.environ.get("K2_BIN", str(ROOT / "build" / "k2"))
    assert os.path.exists(path), f"k2 binary not found at {path} (set K2_BIN)"
    return path


def run_k2(*args, stdin=None, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")  # tests run side by side on 2 cores
    r = subprocess.run([k2_bin(), *map(str, args)], input=stdin, capture_output=True, text=True, env=env,
                       timeout=120, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return r.stdout


def generate(*args):
    """(ids, text) from `k2 generate`."""
    lines = run_k2("generate", *args).split("\n", 1)
    return json.loads(lines[0]), lines[1] if len(lines) > 1 else ""


def check_greedy(ours, prompt):
    """Equal to the golden continuation, except that after a step where transformers' best two logits were
    within 1e-3 (a tie that float rounding may break either way) the rest is not compared."""
    for step, (a, b) in enumerate(zip(ours, prompt["greedy"])):
        if a != b:
            margin = prompt["top2_margins"][step]
            assert margin < 1e-3, f"token {step}: {a} != {b} with a top-2 logit margin of {margin}"
            return
    assert len(ours) == len(prompt["greedy"])


@pytest.mark.parametrize("index", range(len(GOLDEN["prompts"])))
def test_greedy_matches_transformers(index):
    prompt = GOLDEN["prompts"][index]
    ids, _ = generate(DEMO, "--token-ids", ",".join(map(str, prompt["ids"])), "--temperature", 0,
                      "--max-tokens", len(prompt["greedy"]), "--ignore-eos")
    check_greedy(ids, prompt)


def test_default_model_is_the_demo(tmp_path):
    prompt = GOLDEN["prompts"][0]
    # From another working directory: the demo model is found from the executable's place in the tree.
    lines = run_k2("generate", "--token-ids", ",".join(map(str, prompt["ids"])), "--temperature", 0,
                   "--max-tokens", len(prompt["greedy"]), "--ignore-eos", cwd=tmp_path).split("\n", 1)
    check_greedy(json.loads(lines[0]), prompt)


def english_share(text, words):
    found = re.findall(r"[A-Za-z]+", text)
    return sum(w.lower() in words for w in found) / max(len(found), 1), len(found)


def test_greedy_generation_is_english():
    if not DICT.exists():
        pytest.fail(f"{DICT} is missing: install Debian's wamerican (scripts/setup does)")
    words = {w.strip().lower() for w in DICT.read_text(errors="replace").split("\n") if w.strip()}
    texts = []
    for prompt in ("The program reads the configuration file and", "If the option is given, the"):
        texts.append(generate(DEMO, "--prompt", prompt, "--temperature", 0, "--max-tokens", 48)[1])
    for message in ("What does the file system do?", "How do I copy a file?"):
        texts.append(generate(DEMO, "--chat", message, "--temperature", 0, "--max-tokens", 48)[1])
    share, count = english_share(" ".join(texts), words)
    assert count >= 40, texts
    assert share > 0.7, f"{share:.0%} of {count} words are in {DICT}: {texts}"
    # The check can fail: random tokens of the same vocabulary (whose pieces are often short words) score
    # about 50%.
    noise, _ = english_share(kimi_tiktoken(DEMO).decode([(i * 2654435761) % 3840 for i in range(4 * 48)]), words)
    assert noise < 0.6, noise


def test_tokenizer_matches_tiktoken():
    enc = kimi_tiktoken(DEMO)
    texts = ["The program reads the configuration file.", "  indented\n\n\tcode: x = f(1, 2) # 1234567",
             "Unicode: caf\u00e9 \u4e2d\u6587 \U0001f600", "<|im_user|>user<|im_middle|>Hi<|im_end|>"]
    out = run_k2("tokenize", DEMO, stdin="".join(json.dumps(t) + "\n" for t in texts))
    ours = [json.loads(line) for line in out.splitlines()]
    assert ours == [enc.encode(t, allowed_special="all") for t in texts]


def test_chat_template_matches_jinja2():
    request = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}],
               "add_generation_prompt": True}
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    expected = env.from_string((DEMO / "chat_template.jinja").read_text()).render(
        messages=request["messages"], add_generation_prompt=True, tools=None)
    out = run_k2("chat-template", DEMO, stdin=json.dumps(request))
    assert out == expected


def test_missing_demo_model_is_a_clear_error(tmp_path):
    # A k2 outside the source tree, run from a folder without models/: the error names what it looked for.
    exe = tmp_path / "k2"
    exe.write_bytes(pathlib.Path(k2_bin()).read_bytes())
    exe.chmod(0o755)
    for command in (["generate", "--prompt", "Hi"], ["serve", "--port", "1"]):
        r = subprocess.run([str(exe), *command], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert r.returncode == 1, r
        assert "no MODEL given and the demo model models/kimi-k2-demo" in r.stderr, r.stderr
        assert "pass a checkpoint directory or hub id as MODEL" in r.stderr, r.stderr

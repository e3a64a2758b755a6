"""Helpers for the tokenizer differential tests: the k2 binary, fixtures, and tiktoken set up as Kimi-K2's."""
import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures"

# Kimi-K2's pre-tokenizer exactly as tokenization_kimi.py writes it (Rust-regex `&&` intersections, which
# pip's tiktoken accepts through fancy-regex). k2 uses its own PCRE2 rewrite of it.
KIMI_PAT = "|".join([
    r"""[\p{Han}]+""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])


def k2_bin() -> str:
    path = os.environ.get("K2_BIN") or str(REPO / "build" / "k2")
    assert Path(path).exists(), f"k2 binary not found at {path}: build it or set K2_BIN"
    return path


def run_lines(args, lines, timeout=300):
    """Runs `k2 ARGS` with one JSON value per stdin line; returns the parsed JSON output lines."""
    payload = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)
    proc = subprocess.run([k2_bin(), *args], input=payload.encode("utf-8"), capture_output=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    # split("\n"), not splitlines(): JSON strings may hold raw U+2028, U+0085 ...
    out = [json.loads(line) for line in proc.stdout.decode("utf-8").split("\n") if line]
    assert len(out) == len(lines), f"{len(out)} output lines for {len(lines)} inputs"
    return out


def kimi_tiktoken(model_dir: Path):
    """pip's tiktoken configured as Kimi-K2's TikTokenTokenizer for a model folder."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(model_dir / "tiktoken.model"))
    num_base = len(ranks)
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    named = {int(k): v["content"] for k, v in config.get("added_tokens_decoder", {}).items()}
    special = {named.get(i, f"<|reserved_token_{i}|>"): i for i in range(num_base, num_base + 256)}
    return tiktoken.Encoding(name="kimi", pat_str=KIMI_PAT, mergeable_ranks=ranks, special_tokens=special)

#!/usr/bin/env python3
"""Single-thread encode throughput: `k2 tokenize --bench` against pip's tiktoken, in the same run, on the
same >= 10 MB mixed corpus, with Kimi-K2's pre-tokenizer and the o200k ranks (tests/fixtures/tokenizer/kimi-o200k).

Usage: bench/tokenizer_bench.py [--k2 build/k2] [--mb 12] [--repeat 3] [--out docs/perf/tokenizer.md]
The corpus is built deterministically (seeded): Python standard-library source code, multi-script prose
assembled from the tokenizer fixture corpus and per-script word pools, numbers/whitespace-heavy text.
Both encoders get the same documents (one encode call per ~4 KB document, special-token text as plain
text) and must produce the same token count and checksum, so both do the same work."""
import argparse
import json
import os
import random
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "py" / "tokenizer"))
from k2_tok import FIXTURES, kimi_tiktoken  # noqa: E402
from test_tiktoken_diff import POOLS, random_string  # noqa: E402

MODEL = FIXTURES / "tokenizer" / "kimi-o200k"


def code_docs(limit_bytes):
    docs, total = [], 0
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for k in range(0, len(text), 4000):
            docs.append(text[k:k + 4000])
            total += len(docs[-1].encode())
            if total >= limit_bytes:
                return docs
    return docs


def prose_docs(rng, limit_bytes):
    corpus = json.loads((FIXTURES / "tokenizer" / "tokenizer_corpus.json").read_text())
    words = {name: [pool[i:i + rng.randint(2, 6)] for i in range(0, len(pool), 3)]
             for name, pool in POOLS.items() if isinstance(pool, str) and name not in ("space", "marks")}
    english = ("the of and to in is that for it as with was on be by this are or from at which an have not "
               "were but all they their one can has more been would other when there will its into some than "
               "model token server request latency throughput cache expert attention layer kernel").split()
    docs, total = [], 0
    while total < limit_bytes:
        parts = []
        while sum(len(p) for p in parts) < 1500:
            r = rng.random()
            if r < 0.45:
                sentence = " ".join(rng.choice(english) for _ in range(rng.randint(5, 18)))
                parts.append(sentence.capitalize() + rng.choice([". ", ", ", "! ", "? ", ".\n"]))
            elif r < 0.75:
                script = rng.choice(list(words))
                sep = "" if script in ("han", "kana") else " "
                parts.append(sep.join(rng.choice(words[script]) for _ in range(rng.randint(3, 12))) + "。 ")
            elif r < 0.85:
                parts.append(rng.choice(corpus))
            elif r < 0.95:
                parts.append(f"{rng.randint(0, 10**9)} {rng.random():.6f} {rng.randint(1900, 2100)}-0{rng.randint(1, 9)} ")
            else:
                parts.append(random_string(rng))
        docs.append("".join(parts))
        total += len(docs[-1].encode())
    return docs


def build_corpus(mb, seed=7):
    rng = random.Random(seed)
    limit = int(mb * 1e6)
    docs = code_docs(limit * 0.35) + prose_docs(rng, limit * 0.65)
    rng.shuffle(docs)
    return docs


def bench_tiktoken(enc, docs, repeat):
    best, tokens, checksum = 1e30, 0, 0
    for _ in range(repeat):
        start = time.perf_counter()
        out = [enc.encode_ordinary(d) for d in docs]
        best = min(best, time.perf_counter() - start)
    mask = (1 << 64) - 1
    for ids in out:
        tokens += len(ids)
        for i in ids:
            checksum = (checksum * 1000003 + i) & mask
    return best, tokens, checksum


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k2", default=os.environ.get("K2_BIN", str(REPO / "build" / "k2")))
    ap.add_argument("--mb", type=float, default=12.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", help="append the result table to this markdown file")
    args = ap.parse_args()

    docs = build_corpus(args.mb)
    nbytes = sum(len(d.encode()) for d in docs)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
        corpus_path = f.name
    try:
        # Single thread: tiktoken's encode_ordinary runs on the calling thread; k2's bench loop is one thread.
        enc = kimi_tiktoken(MODEL)
        tt_seconds, tt_tokens, tt_checksum = bench_tiktoken(enc, docs, args.repeat)
        proc = subprocess.run([args.k2, "tokenize", str(MODEL), "--no-special", "--bench", corpus_path,
                               "--repeat", str(args.repeat)], capture_output=True, text=True, check=True)
        k2 = json.loads(proc.stdout)
    finally:
        os.unlink(corpus_path)
    assert k2["bytes"] == nbytes, (k2["bytes"], nbytes)
    same = k2["tokens"] == tt_tokens and k2["checksum"] == tt_checksum
    rows = [("k2 (PCRE2 JIT + flat-hash BPE)", k2["seconds"], nbytes / k2["seconds"] / 1e6),
            (f"tiktoken {getattr(__import__('tiktoken'), '__version__', '?')} (fancy-regex, Rust)", tt_seconds,
             nbytes / tt_seconds / 1e6)]
    lines = [f"corpus: {len(docs)} documents, {nbytes / 1e6:.2f} MB, {tt_tokens} tokens "
             f"({'identical ids' if same else 'IDS DIFFER'}), best of {args.repeat}",
             "", "| encoder | seconds | MB/s |", "|---|---|---|"]
    lines += [f"| {name} | {sec:.3f} | {mbps:.2f} |" for name, sec, mbps in rows]
    lines.append("")
    lines.append(f"speedup k2 / tiktoken: {tt_seconds / k2['seconds']:.2f}x")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    if not same:
        sys.exit("token ids differ between k2 and tiktoken")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Trains a byte-level BPE vocabulary on corpus.txt with Kimi-K2's pre-tokenizer and writes it in Kimi-K2's
tokenizer format (tiktoken.model + tokenizer_config.json with Kimi's special tokens at their offsets after the
BPE ranks, as in tests/fixtures/tiny-kimi-k2, and Kimi-K2-Instruct-0905's chat_template.jinja). Then encodes
the corpus with pip's tiktoken configured as Kimi's tokenizer into the training data: tokens.bin (uint16),
documents separated by [EOS], a quarter of the paragraph pairs as chat turns in the chat template's format.

usage: make_tokenizer.py WORK_DIR MODEL_DIR [--vocab 4096]
WORK_DIR holds corpus.txt (make_corpus.py) and receives tokens.bin; MODEL_DIR receives the tokenizer files.
"""
import argparse
import base64
import collections
import heapq
import json
import pathlib
import random
import sys

import numpy as np
import regex

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "py" / "tokenizer"))
from k2_tok import KIMI_PAT, kimi_tiktoken  # noqa: E402  (Kimi's pre-tokenizer and tiktoken set-up)

FIXTURE = REPO / "tests" / "fixtures" / "tiny-kimi-k2"
TEMPLATE = REPO / "tests" / "fixtures" / "chat_templates" / "kimi-k2-instruct-0905.jinja"
NUM_SPECIAL = 256  # Kimi reserves 256 ids after the BPE ranks
DEFAULT_SYSTEM = "You are Kimi, an AI assistant created by Moonshot AI."


def count_words(text):
    pattern = regex.compile(KIMI_PAT, regex.V1)
    return collections.Counter(pattern.findall(text))


def train_bpe(word_counts, num_ranks):
    """Merges the most frequent adjacent pair until num_ranks byte strings exist; rank = order of creation."""
    vocab = [bytes([b]) for b in range(256)]
    index = {v: i for i, v in enumerate(vocab)}
    words = [list(w.encode("utf-8")) for w in word_counts]
    freqs = list(word_counts.values())
    pairs = collections.Counter()
    where = collections.defaultdict(set)
    for i, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pairs[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-count, pair) for pair, count in pairs.items()]
    heapq.heapify(heap)
    while len(vocab) < num_ranks and heap:
        count, best = heapq.heappop(heap)
        if -count != pairs.get(best, 0) or count == 0:
            continue  # stale entry
        merged = vocab[best[0]] + vocab[best[1]]
        if merged not in index:
            index[merged] = len(vocab)
            vocab.append(merged)
        new_id = index[merged]
        changed = set()
        for i in where.pop(best, ()):
            word, f = words[i], freqs[i]
            if len(word) < 2:
                continue
            for pair in zip(word, word[1:]):
                pairs[pair] -= f
                changed.add(pair)
            out, j = [], 0
            while j < len(word):
                if j + 1 < len(word) and (word[j], word[j + 1]) == best:
                    out.append(new_id)
                    j += 2
                else:
                    out.append(word[j])
                    j += 1
            words[i] = out
            for pair in zip(out, out[1:]):
                pairs[pair] += f
                where[pair].add(i)
                changed.add(pair)
        pairs.pop(best, None)
        for pair in changed:
            if pairs.get(pair, 0) > 0:
                heapq.heappush(heap, (-pairs[pair], pair))
    return vocab


def write_tokenizer(vocab, model_dir):
    model_dir.mkdir(parents=True, exist_ok=True)
    with open(model_dir / "tiktoken.model", "w") as f:
        for rank, token in enumerate(vocab):
            f.write(f"{base64.b64encode(token).decode()} {rank}\n")
    # Kimi's special tokens keep their offsets from the first id after the BPE ranks (see the fixture).
    fixture = json.loads((FIXTURE / "tokenizer_config.json").read_text())
    fixture_base = json.loads((FIXTURE / "config.json").read_text())["vocab_size"] - NUM_SPECIAL
    config = dict(fixture)
    config["added_tokens_decoder"] = {str(int(k) - fixture_base + len(vocab)): v
                                      for k, v in fixture["added_tokens_decoder"].items()}
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
    (model_dir / "chat_template.jinja").write_text(TEMPLATE.read_text())


def chat_turn(user, assistant):
    """One conversation exactly as the chat template renders it (checked against jinja2 in main)."""
    return (f"<|im_system|>system<|im_middle|>{DEFAULT_SYSTEM}<|im_end|><|im_user|>user<|im_middle|>{user}"
            f"<|im_end|><|im_assistant|>assistant<|im_middle|>{assistant}<|im_end|>")


def check_chat_turn():
    import jinja2
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    rendered = env.from_string(TEMPLATE.read_text()).render(
        messages=[{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}],
        add_generation_prompt=False, tools=None)
    # The template closes the last message only when another follows; the model learns to close its own.
    assert rendered + "<|im_end|>" == chat_turn("Q?", "A."), rendered


def encode_corpus(text, encoding, seed=0):
    """Token stream: each document, then [EOS]; one in four paragraph pairs becomes a chat turn instead."""
    rng = random.Random(seed)
    eos = encoding.encode_single_token("[EOS]")
    ids = []
    for document in text.split("\f\n"):
        paragraphs = [p for p in document.split("\n\n") if p.strip()]
        prose, j = [], 0
        while j < len(paragraphs):
            if j + 1 < len(paragraphs) and rng.random() < 0.25:
                if prose:
                    ids += encoding.encode_ordinary("\n\n".join(prose)) + [eos]
                    prose = []
                turn = chat_turn(paragraphs[j].strip(), paragraphs[j + 1].strip())
                ids += encoding.encode(turn, allowed_special="all")
                j += 2
            else:
                prose.append(paragraphs[j].strip())
                j += 1
        if prose:
            ids += encoding.encode_ordinary("\n\n".join(prose)) + [eos]
    return np.array(ids, dtype=np.uint16)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work_dir", type=pathlib.Path)
    ap.add_argument("model_dir", type=pathlib.Path)
    ap.add_argument("--vocab", type=int, default=4096, help="total vocabulary, 256 special ids included")
    args = ap.parse_args()
    check_chat_turn()
    text = (args.work_dir / "corpus.txt").read_text()
    vocab = train_bpe(count_words(text.replace("\f\n", "")), args.vocab - NUM_SPECIAL)
    write_tokenizer(vocab, args.model_dir)
    encoding = kimi_tiktoken(args.model_dir)
    tokens = encode_corpus(text, encoding)
    tokens.tofile(args.work_dir / "tokens.bin")
    print(f"tokenizer: {len(vocab)} BPE ranks + {NUM_SPECIAL} specials -> {args.model_dir}; "
          f"{len(tokens)} training tokens ({len(text) / len(tokens):.2f} chars/token) -> {args.work_dir / 'tokens.bin'}")


if __name__ == "__main__":
    main()

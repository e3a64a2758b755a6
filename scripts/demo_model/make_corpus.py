#!/usr/bin/env python3
"""Gathers English prose from documentation that Debian packages install on this machine: GNU info manuals
(/usr/share/info), the running text of the man pages of sections 1, 5, 7 and 8, the POD documentation of Perl's
modules, and the docstrings of Python's standard library. Writes OUT/corpus.txt: documents separated by a line holding only "\\f", paragraphs by a
blank line; only ASCII paragraphs that read as sentences are kept, each once.

usage: make_corpus.py OUT_DIR [--max-man-pages N]
The corpus is regenerated rather than committed (it is larger than the repository should carry).
"""
import argparse
import ast
import gzip
import hashlib
import pathlib
import re
import sys

DOC_SEPARATOR = "\f"
# A prose word: letters with an optional apostrophe/hyphen part and trailing punctuation.
WORD = re.compile(r"^[(\"']?[A-Za-z]+(?:['-][A-Za-z]+)*[.,;:!?)\"']*$")
FANCY = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": " - ",
         "\u2010": "-", "\u2212": "-", "\u00a0": " ", "\u2026": "..."}


def clean_paragraph(text):
    """The paragraph as one normalized line, or None when it does not read as English sentences."""
    for bad, good in FANCY.items():
        text = text.replace(bad, good)
    text = " ".join(text.split())
    if not text.isascii() or not 60 <= len(text) <= 1500:
        return None
    words = text.split()
    if len(words) < 8 or not text[0].isupper() or text[-1] not in ".!?":
        return None
    prose = sum(1 for w in words if WORD.match(w))
    if prose < 0.8 * len(words):
        return None
    return text


def paragraphs_of(lines):
    """Blank-line separated blocks of lines, joined with spaces."""
    block = []
    for line in lines:
        if line.strip():
            block.append(line.strip())
        elif block:
            yield " ".join(block)
            block = []
    if block:
        yield " ".join(block)


def read_maybe_gz(path):
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", "replace")


def info_documents():
    """GNU info manuals: one document per node, without the node headers and menus."""
    for path in sorted(pathlib.Path("/usr/share/info").glob("*.info*")):
        text = read_maybe_gz(path)
        for node in text.split("\x1f"):
            lines = [l for l in node.splitlines()
                     if not l.startswith(("File: ", "Tag Table:", "* ", "End Tag Table", "Indirect:"))]
            yield path.name, list(paragraphs_of(lines))


ROFF_ESCAPES = [(r"\\f(\[[^\]]*\]|\(..|.)", ""), (r"\\s[-+]?\d", ""), (r"\\\*(\[[^\]]*\]|\(..|.)", ""),
                (r"\\\(aq|\\\(oq|\\\(cq|\\\(ga", "'"), (r"\\\(dq|\\\(lq|\\\(rq", '"'), (r"\\\(em", " - "),
                (r"\\\(en|\\\(hy|\\-", "-"), (r"\\[&|^c%]", ""), (r"\\[ ~0]", " "), (r"\\e", "\\\\")]
ROFF_ESCAPES = [(re.compile(a), b) for a, b in ROFF_ESCAPES]
# Macros that end a paragraph; the line after .TP is a tag (an option name), not prose.
ROFF_BREAKS = {"SH", "SS", "TH", "PP", "P", "LP", "TP", "IP", "HP", "sp", "br", "RS", "RE", "in", "ti", "TQ",
               "Sh", "Ss", "Pp", "Bl", "El", "It", "Bd", "Ed", "Dd", "Dt", "Os", "Nm", "Nd"}
ROFF_FONTS = {"B", "I", "BR", "IR", "BI", "RB", "RI", "IB", "SM", "SB", "R"}


def roff_words(args):
    return [a.strip('"') for a in re.findall(r'"[^"]*"|\S+', args)]


def man_paragraphs(source):
    """The running text of a man page's roff source (man and mdoc macros): paragraphs between the breaking
    macros, with font changes and the common escapes replaced; no-fill blocks (examples) and tags dropped."""
    paragraphs, block, skip_next, nofill, in_macro_def = [], [], False, False, False
    for line in source.splitlines():
        if in_macro_def:
            in_macro_def = line.strip() != ".."
            continue
        if line.startswith((".\\\"", "'\\\"", '.\\"')):
            continue
        if line.startswith((".", "'")):
            name, _, args = line[1:].strip().partition(" ")
            if name == "de":
                in_macro_def = True
            elif name in ("nf", "EX", "Bd"):
                nofill = True
            elif name in ("fi", "EE", "Ed"):
                nofill = False
            if name in ROFF_FONTS and not nofill and not skip_next:
                alternating = len(name) == 2 and name not in ("SM", "SB")
                block.append(("" if alternating else " ").join(roff_words(args)))
                continue
            if name in ROFF_BREAKS or name in ("nf", "fi", "EX", "EE"):
                if block:
                    paragraphs.append(" ".join(block))
                block = []
                skip_next = name == "TP"
            continue
        if nofill:
            continue
        if skip_next:
            skip_next = False
            continue
        block.append(line)
    if block:
        paragraphs.append(" ".join(block))
    out = []
    for paragraph in paragraphs:
        for pattern, replacement in ROFF_ESCAPES:
            paragraph = pattern.sub(replacement, paragraph)
        if "\\" not in paragraph:
            out.append(paragraph)
    return out


def man_documents(max_pages):
    """Man pages of sections 1, 5, 7, 8 (English ones only: the translations live in other folders)."""
    pages = []
    for section in ("man1", "man5", "man7", "man8"):
        pages += sorted(p for p in pathlib.Path("/usr/share/man", section).glob("*")
                        if p.is_file() and not p.is_symlink())
    if len(pages) > max_pages:
        step = len(pages) / max_pages
        pages = [pages[int(i * step)] for i in range(max_pages)]
    for path in pages:
        yield path.name, man_paragraphs(read_maybe_gz(path))


POD_CODE = re.compile(r"[A-Z]<+\s*([^<>]*?)\s*>+")
POD_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/", "quot": '"', "amp": "&"}


def pod_text(paragraph):
    def inner(m):
        code, body = m.group(0)[0], m.group(1)
        if code == "E":
            return POD_ESCAPES.get(body, "")
        if code == "L":
            return body.split("|")[0].split("/")[0] or body
        return "" if code in "XZ" else body
    for _ in range(3):  # nested codes
        paragraph = POD_CODE.sub(inner, paragraph)
    return paragraph


def pod_documents():
    """Perl's module documentation: the plain paragraphs of the POD blocks (no headings, no verbatim code)."""
    roots = [pathlib.Path("/usr/share/perl"), pathlib.Path("/usr/share/perl5")]
    for path in sorted(p for root in roots if root.is_dir() for p in root.rglob("*") if p.suffix in (".pm", ".pod")):
        in_pod, paragraphs = False, []
        blocks = path.read_text("utf-8", "replace").split("\n\n")
        for block in blocks:
            if block.startswith("=cut"):
                in_pod = False
            elif block.startswith("="):
                in_pod = True
            elif in_pod and block.strip() and not block[0].isspace():
                paragraphs.append(pod_text(block))
        yield path.name, paragraphs


def python_documents():
    """Docstrings of the standard library (modules, classes, functions): one document per module."""
    root = pathlib.Path(f"/usr/lib/python{sys.version_info.major}.{sys.version_info.minor}")
    for path in sorted(root.rglob("*.py")):
        if any(part in ("test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages")
               for part in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text("utf-8", "replace"))
        except (SyntaxError, ValueError):
            continue
        paragraphs = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    paragraphs += [p for p in paragraphs_of(doc.splitlines()) if ">>>" not in p]
        yield path.name, paragraphs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--max-man-pages", type=int, default=100000)
    args = ap.parse_args()
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen = set()
    counts = {}
    with open(out_dir / "corpus.txt", "w") as out:
        sources = [("info", info_documents()), ("man", man_documents(args.max_man_pages)),
                   ("perl", pod_documents()), ("python", python_documents())]
        for source, documents in sources:
            for _, paragraphs in documents:
                kept = []
                for paragraph in paragraphs:
                    text = clean_paragraph(paragraph)
                    if text is None:
                        continue
                    digest = hashlib.blake2b(text.encode(), digest_size=12).digest()
                    if digest not in seen:
                        seen.add(digest)
                        kept.append(text)
                if kept:
                    out.write("\n\n".join(kept) + "\n" + DOC_SEPARATOR + "\n")
                    counts[source] = counts.get(source, 0) + sum(len(k) + 2 for k in kept)
    total = sum(counts.values())
    print(f"corpus: {total / 1e6:.1f} MB of prose ({', '.join(f'{k} {v / 1e6:.1f} MB' for k, v in counts.items())})"
          f" -> {out_dir / 'corpus.txt'}")


if __name__ == "__main__":
    main()

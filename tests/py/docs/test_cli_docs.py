"""docs/cli.md is generated from the parser (`k2 <command> --help`); it must match what the built k2 prints."""
import difflib
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
GENERATOR = REPO / "scripts" / "gen_cli_docs"
DOC = REPO / "docs" / "cli.md"


def k2_bin():
    path = os.environ.get("K2_BIN")
    if not path:
        pytest.fail("K2_BIN is not set (path to the built k2 binary); scripts/test sets it")
    return path


def test_cli_reference_is_current(tmp_path):
    fresh = tmp_path / "cli.md"
    subprocess.run([sys.executable, str(GENERATOR), "--k2", k2_bin(), "--output", str(fresh)], check=True,
                   timeout=120)
    expected, current = fresh.read_text(), DOC.read_text() if DOC.exists() else ""
    if expected != current:
        diff = "".join(difflib.unified_diff(current.splitlines(True), expected.splitlines(True), "docs/cli.md",
                                            "generated", n=1))
        pytest.fail(f"docs/cli.md is out of date; refresh it with\n    scripts/gen_cli_docs --k2 {k2_bin()}\n"
                    f"{diff[:4000]}")


def test_reference_covers_every_listed_command():
    # Independent of the generator's walk: every name under "Subcommands:" of `k2 --help` has a section.
    text = subprocess.run([k2_bin(), "--help"], capture_output=True, text=True, check=True).stdout
    listed = text.split("Subcommands:", 1)[1].splitlines()
    names = [line.split()[0] for line in listed if line.startswith("  ") and line.strip()]
    assert "serve" in names and "bench" in names
    doc = DOC.read_text()
    for name in names:
        assert f"## `k2 {name}`" in doc, name
    assert "## `k2 bench serve`" in doc

"""The Python examples in docs/ run as written."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def run_example(name: str) -> None:
    """Execute the last python block of docs/<name>."""
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), re.S)
    assert blocks, f"docs/{name} has no python example"
    exec(compile(blocks[-1], f"docs/{name}", "exec"), {})


def test_api_example_runs(capsys):
    run_example("api.md")
    assert "(64, 64)" in capsys.readouterr().out


def test_chains_example_runs(capsys):
    run_example("chains.md")
    assert capsys.readouterr().out.startswith("2 done ")


def test_session_example_runs(capsys):
    run_example("session.md")
    out = capsys.readouterr().out
    kinds = "('user', 'text'), ('user', 'text'), ('model', 'thinking'), ('model', 'image')]"
    assert kinds in out  # think_then_generate after the rewind
    assert "10 identical: True" in out  # loaded with every turn; the replay reproduces

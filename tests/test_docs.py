"""The Python examples in docs/ run as written."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_api_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "api.md").read_text(), re.S)
    assert blocks, "docs/api.md has no python example"
    exec(compile(blocks[-1], "docs/api.md", "exec"), {})
    assert "(64, 64)" in capsys.readouterr().out


def test_chains_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "chains.md").read_text(), re.S)
    exec(compile(blocks[-1], "docs/chains.md", "exec"), {})
    assert capsys.readouterr().out.startswith("2 done ")

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


def test_errors_doc_lists_every_error_class():
    """docs/errors.md has a row for every BagelError subclass the package defines."""
    import importlib
    import pkgutil

    import bagel
    import workbench
    from bagel.errors import BagelError

    for package in (bagel, workbench):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not module.name.endswith("__main__"):  # runs the command
                importlib.import_module(module.name)
    classes, seen = [BagelError], set()
    while classes:
        cls = classes.pop()
        if cls not in seen:
            seen.add(cls)
            classes.extend(cls.__subclasses__())
    text = (DOCS / "errors.md").read_text()
    ours = {c for c in seen if c.__module__.split(".")[0] in ("bagel", "workbench")}
    missing = [c.__name__ for c in ours if f"| `{c.__name__}` (`{c.__module__}`" not in text]
    assert not missing, f"docs/errors.md does not list {missing}"

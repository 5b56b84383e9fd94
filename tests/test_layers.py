"""The layers import downwards only: bagel/ ← the workbench's core (its top-level modules,
store/, scenario/, world/) ← app/ ← server/ ← cli/. Read from the source (no module is
imported), so an arrow that runs back up fails here whatever the code path."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FACES = ("workbench.cli", "workbench.server", "workbench.app")
# what each part of the code must not import
FORBIDDEN = {
    "bagel": ("workbench", "app_pages", "streamlit"),
    "workbench core": FACES,
    "workbench.app": ("workbench.cli", "workbench.server"),
    "workbench.server": ("workbench.cli",),
}


def part_of(module: str) -> str | None:
    if module.split(".")[0] == "bagel":
        return "bagel"
    for face in FACES:
        if module == face or module.startswith(face + "."):
            return None if face == "workbench.cli" else face
    return "workbench core" if module != "workbench.__main__" else None


def imported(path: Path) -> set[str]:
    """Every module name an import statement of `path` names, `from x import y` as x.y."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules() -> list[tuple[str, Path]]:
    found = []
    for package in ("bagel", "workbench"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found.append((".".join(p for p in parts if p != "__init__"), path))
    return found


def test_every_part_of_the_code_has_its_layer():
    parts = {name: part_of(name) for name, _ in modules()}
    assert parts["workbench.models"] == "workbench core"
    assert parts["workbench.store.persist"] == "workbench core"
    assert parts["workbench.app.model"] == "workbench.app"
    assert parts["bagel.profiles"] == "bagel"


@pytest.mark.parametrize("name,path", modules(), ids=[name for name, _ in modules()])
def test_no_import_runs_back_up_a_layer(name, path):
    part = part_of(name)
    if part is None:  # the command and the entry point sit on top
        return
    upward = sorted(
        target
        for target in imported(path)
        for above in FORBIDDEN[part]
        if target == above or target.startswith(above + ".")
    )
    assert not upward, f"{name} ({part}) imports a layer above it: {upward}"

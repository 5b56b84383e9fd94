"""Where a command may write: the one rule every writer checks before it writes anything
(export, run and demo, replay's report, the app's saves).

- An output may not be, contain or lie inside an input the command reads: a session
  folder, a scenario file, the images it names. (A scenario's output may lie in the
  scenario's folder, e.g. `runs/` beside it, but may not be that folder or hold it.)
- An output may not lie inside any saved session (only a replay's report goes there).
- An output may not be a symbolic link, a file where a folder is due (or a folder where
  a file is due), or lie under a file or in a folder that cannot be written.
- An existing, non-empty output folder is replaced only when asked (`overwrite`) and
  only when it holds the marker file that the same kind of command leaves in every
  folder it makes: never a saved session, never a folder made otherwise.

Each refusal is an `OutputError` (exit code 2 in the CLI) naming the paths involved.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from bagel import safejson
from bagel.errors import InputError
from workbench.files import write_atomic
from workbench.store.session_format import MANIFEST as SESSION_MANIFEST

MARKER = ".bagel-workbench-output.json"
MARKER_FORMAT = "bagel-workbench-output"
REPORT = "replay_report.json"  # a replay's report, by default in the session folder
REPORT_FORMAT = "bagel-workbench-replay-report"


class OutputError(InputError):
    """An output path would overwrite or hold an input, or cannot be written."""


def absolute(path: str | Path) -> Path:
    """path made absolute with its parent folders resolved; its own name is not followed,
    so a link stays visible as a link."""
    path = Path(path).expanduser()
    if path.name in ("", ".", ".."):  # nothing of its own to keep unresolved
        return path.resolve()
    return Path(os.path.realpath(path.parent)) / path.name


def check_target(
    path: str | Path,
    inputs: Iterable[str | Path] = (),
    folder: bool = True,
    in_session: bool = False,
) -> Path:
    """Refuse `path` as a place to write (a folder, or a file with folder=False) when it is,
    holds or lies inside one of `inputs`, lies inside a saved session (unless in_session:
    a replay's own report), is a link, is the wrong kind of entry, or sits where nothing
    can be written. Returns it absolute (see `absolute`)."""
    out = absolute(path)
    for given in inputs:
        _check_apart(out, Path(given))
    session = next((p for p in out.parents if (p / SESSION_MANIFEST).is_file()), None)
    if session is not None and not in_session:
        raise OutputError(f"{out}: lies inside the saved session {session}; choose another output")
    if out.is_symlink():
        raise OutputError(
            f"{out}: is a symbolic link (to {os.path.realpath(out)}); give a plain path"
        )
    if out.exists():
        if folder and not out.is_dir():
            raise OutputError(f"{out}: exists and is not a folder")
        if not folder and not out.is_file():
            raise OutputError(f"{out}: exists and is not a regular file")
    if folder and out.is_dir():
        _check_writable(out, out)
    _check_writable(_nearest_existing(out.parent, out), out)
    return out


def check_output_folder(
    out: str | Path, kind: str, inputs: Iterable[str | Path] = (), overwrite: bool = False
) -> Path:
    """`check_target`, then: an existing non-empty folder is accepted only with `overwrite`
    and only when an earlier output of the same `kind` made it (its marker). Returns the
    folder absolute; the caller builds the new content beside it and renames it in."""
    out = check_target(out, inputs)
    if not out.is_dir() or not any(out.iterdir()):
        return out
    if (out / SESSION_MANIFEST).exists():
        raise OutputError(
            f"{out}: is a saved session ({out / SESSION_MANIFEST}); a {kind} never replaces "
            "one: choose another folder"
        )
    if not overwrite:
        raise OutputError(
            f"{out}: folder is not empty; pass overwrite to replace an earlier {kind}"
        )
    made = made_by(out)
    if made != kind:
        what = f"its {MARKER} names {made!r}" if made else f"it holds no {MARKER}"
        raise OutputError(
            f"{out}: folder is not empty and is not an earlier {kind}'s ({what}); overwrite "
            f"replaces only an earlier {kind}'s folder: choose another folder"
        )
    return out


def replay_report_path(folder: str | Path, report: str | Path | None = None) -> Path:
    """Where a replay of the session `folder` may write its report (checked before the
    replay runs). The default, replay_report.json in the session folder, is the one file
    a replay adds there (it needs a writable folder: pass another path for a read-only
    one). Elsewhere the file may not lie in the session folder, and an existing file is
    replaced only when it is an earlier replay report."""
    folder = Path(folder)
    path = folder / REPORT
    if report is None or absolute(report) == absolute(path):
        try:
            return check_target(path, folder=False, in_session=True)
        except OutputError as err:
            raise OutputError(
                f"{err}; the replay report cannot go in the session folder: pass another "
                "path for it (workbench replay --report PATH)"
            ) from None
    path = check_target(report, [folder], folder=False)
    if path.exists() and not _is_report(path):
        raise OutputError(
            f"{path}: exists and is not an earlier replay report; choose another path"
        )
    return path


def _is_report(path: Path) -> bool:
    try:
        if path.stat().st_size > 1 << 26:
            return False
        return safejson.loads(path.read_text(encoding="utf-8")).get("format") == REPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def mark(folder: Path, kind: str) -> None:
    """Leave the marker saying that a command of `kind` made `folder`."""
    text = json.dumps({"format": MARKER_FORMAT, "kind": kind}) + "\n"
    write_atomic(folder / MARKER, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def made_by(folder: Path) -> str | None:
    """The kind of command whose marker `folder` holds; None without a (readable) one."""
    path = folder / MARKER
    if path.is_symlink() or not path.is_file() or path.stat().st_size > 4096:
        return None
    try:
        content = safejson.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(content, dict) and content.get("format") == MARKER_FORMAT:
        kind = content.get("kind")
        return kind if isinstance(kind, str) else None
    return None


def _check_apart(out: Path, given: Path) -> None:
    """out (absolute, not followed) and its target against one input, both resolved."""
    target, source = Path(os.path.realpath(out)), Path(os.path.realpath(given))
    for where in {out, target}:
        if where == source:
            raise OutputError(f"{out}: is the input {given}; choose another output")
        if where.is_relative_to(source):
            raise OutputError(f"{out}: lies inside the input {given}; choose another output")
        if source.is_relative_to(where):
            raise OutputError(f"{out}: holds the input {given}; choose another output")


def _nearest_existing(folder: Path, out: Path) -> Path:
    """The deepest existing folder on the way to `out`; a file on the way is refused."""
    while not folder.exists() and not folder.is_symlink():
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{out}: cannot be made, {folder} is not a folder")
    return folder


def _check_writable(folder: Path, out: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        where = "is" if folder == out else f"would be made in {folder}, which is"
        raise OutputError(f"{out}: {where} not writable (read-only)")

"""Every branch of a browser session, saved after each change, and restoring them.

    SESSIONS/autosave/<workspace id>/claim.json       the tab that saves here (Claims)
                                    /<branch name>/   a saved session (workbench.store)
                                      .../branch.json  its page, its model (what it was
                                                       loaded from, and its identity),
                                                       frame labels and, on a world
                                                       model, its world seed

A branch is saved in place after every finished turn, undo and fork: store.save writes
the new images, then the manifest atomically, so whatever moment the server dies, the
folder loads as the branch was after its last finished turn. The workspace id travels
in the page's address (?ws=...): a reload finds its own branches; a new tab lists the
recent workspaces. Restoring loads each branch with store.load on its own model (the
same frames, the contexts rebuilt from the turns, as a replay of the session has them).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bagel.errors import BagelError
from bagel.inputs import ProgressFn
from bagel.pipeline import BagelPipeline
from workbench import store
from workbench.app.actions import Outcome, metrics_of
from workbench.app.branches import PAGES, Branch, steps_from_turns
from workbench.app.jobs import set_phase
from workbench.files import write_atomic
from workbench.store import session_format

AUTOSAVE = "autosave"
META = "branch.json"
CLAIM = "claim.json"
WORKSPACE_ID = re.compile(r"[0-9a-f]{12}")
BRANCH_NAME = re.compile(r"(story|world)-[0-9]{1,6}")


class Claims:
    """Which tab saves under each workspace id: one tab per address.

    SESSIONS/autosave/<id>/claim.json names the tab (its browser session) and the
    server process holding the address, written atomically. A tab claims the address
    it opens, and every new address it makes; a tab opened at an address that another
    connected tab holds (a duplicated tab, a copied address) gets an address of its own.
    Every autosave write checks the claim first (`holds`), so two tabs never write the
    same folder. A reload is not refused: the old tab's session is gone by then, as is
    a stopped server's (its process no longer runs).
    """

    def __init__(self, server: str | None = None) -> None:
        self.server = server or f"{os.getpid()}-{secrets.token_hex(4)}"
        self._lock = threading.Lock()

    def claim(self, root: Path, workspace: str, tab: str, alive: Callable[[str], bool]) -> bool:
        """Hold `workspace` for `tab`, unless another tab that is still connected (`alive`;
        or any tab of another running server) holds it."""
        with self._lock:
            holder = self.holder(root, workspace)
            if holder is not None and holder != (self.server, tab) and _live(holder, self, alive):
                return False
            folder = workspace_folder(root, workspace)
            folder.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"server": self.server, "tab": tab}) + "\n"
            write_atomic(folder / CLAIM, lambda t: t.write_text(text, encoding="utf-8"))
            return True

    def holds(self, root: Path, workspace: str, tab: str) -> bool:
        """Whether `tab` still holds `workspace`."""
        return self.holder(root, workspace) == (self.server, tab)

    def save(self, root: Path, workspace: str, tab: str, branch: Branch) -> bool:
        """Autosave `branch` under `workspace` if `tab` holds it (checked and written
        under the claims' lock, so no claim changes hands between); False if not."""
        with self._lock:
            if not self.holds(root, workspace, tab):
                return False
            save_branch(root, workspace, branch)
            return True

    @staticmethod
    def holder(root: Path, workspace: str) -> tuple[str, str] | None:
        """(server, tab) of the claim on `workspace`, None when there is none (or it is
        unreadable: a claim this app did not write holds nothing)."""
        try:
            claim = json.loads((workspace_folder(root, workspace) / CLAIM).read_text("utf-8"))
            server, tab = claim["server"], claim["tab"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (server, tab) if isinstance(server, str) and isinstance(tab, str) else None


def _live(holder: tuple[str, str], claims: Claims, alive: Callable[[str], bool]) -> bool:
    server, tab = holder
    if server == claims.server:
        return alive(tab)
    pid = server.split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)  # another server process, still running: its tabs may be
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


CLAIMS = Claims()  # this server's


def new_workspace_id() -> str:
    return secrets.token_hex(6)


def is_workspace_id(text: str) -> bool:
    return bool(WORKSPACE_ID.fullmatch(text))


def workspace_folder(root: Path, workspace: str) -> Path:
    if not is_workspace_id(workspace):  # it comes from the address bar
        raise ValueError(f"not a workspace id: {workspace!r}")
    return root / AUTOSAVE / workspace


@dataclass(frozen=True)
class SavedBranch:
    name: str
    page: str
    folder: Path
    labels: dict[int, str]  # frame label by turn
    frames: int
    mtime: float
    truth_seed: int | None = None
    model: str | None = None  # what its model was loaded from (None: not recorded)
    identity: str | None = None  # its model's checkpoint identity, as recorded


def save_branch(root: Path, workspace: str, branch: Branch) -> Path | None:
    """Save the branch (in place; see the module's text); an empty branch's folder is
    removed. Returns the folder, or None for an empty branch."""
    folder = workspace_folder(root, workspace) / branch.name
    if not branch.session.turns:
        shutil.rmtree(folder, ignore_errors=True)
        return None
    store.save(branch.session, folder)
    shots = branch.shots
    meta = {
        "page": branch.page,
        "model": branch.model,
        "identity": branch.session.pipe.identity,
        "frames": len(shots),
        "labels": {str(shot.turn): shot.label for shot in shots},
    }
    if branch.truth_seed is not None:
        meta["truth_seed"] = branch.truth_seed
    text = json.dumps(meta, indent=2, ensure_ascii=False) + "\n"
    write_atomic(folder / META, lambda t: t.write_text(text, encoding="utf-8"))
    return folder


def saved_branches(root: Path, workspace: str) -> list[SavedBranch]:
    """The workspace's saved branches, oldest first (unreadable folders are left out)."""
    found = []
    base = workspace_folder(root, workspace)
    if not base.is_dir():
        return []
    for folder in base.iterdir():
        if not (
            BRANCH_NAME.fullmatch(folder.name) and (folder / session_format.MANIFEST).is_file()
        ):
            continue
        try:
            meta = json.loads((folder / META).read_text(encoding="utf-8"))
            page, labels = meta["page"], {int(k): str(v) for k, v in meta["labels"].items()}
            frames = int(meta["frames"])
            seed = meta.get("truth_seed")
            if seed is not None and (type(seed) is not int or not 0 <= seed < 2**31):
                seed = None  # not one this app wrote: no truth rather than a wrong one
            model, identity = meta.get("model"), meta.get("identity")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if page in PAGES:
            mtime = (folder / session_format.MANIFEST).stat().st_mtime
            model = model if isinstance(model, str) else None
            identity = identity if isinstance(identity, str) else None
            found.append(
                SavedBranch(folder.name, page, folder, labels, frames, mtime, seed, model, identity)
            )
    return sorted(found, key=lambda b: b.mtime)


def recent_workspaces(
    root: Path, exclude: str = "", limit: int = 5
) -> list[tuple[str, list[SavedBranch]]]:
    """The most recently saved workspaces other than `exclude`, newest first."""
    base = root / AUTOSAVE
    if not base.is_dir():
        return []
    found = []
    for folder in base.iterdir():
        if folder.name != exclude and is_workspace_id(folder.name):
            branches = saved_branches(root, folder.name)
            if branches:
                found.append((folder.name, branches))
    found.sort(key=lambda w: max(b.mtime for b in w[1]), reverse=True)
    return found[:limit]


def remove_workspace(root: Path, workspace: str) -> None:
    shutil.rmtree(workspace_folder(root, workspace), ignore_errors=True)


def restore(plan: list[tuple[SavedBranch, str, BagelPipeline]]) -> object:
    """Work (for a Job) loading every saved branch on its own model, (branch, the model's
    spec, its pipeline) each: a list of Outcomes, named as saved."""

    def work(progress: ProgressFn) -> list[Outcome]:
        outcomes = []
        for k, (branch, model, pipe) in enumerate(plan, 1):
            set_phase(progress, f"restoring {branch.name} ({k} of {len(plan)})", "turn")
            try:
                session = store.load(branch.folder, pipe, progress=progress)
            except BagelError as err:
                raise type(err)(f"autosaved branch {branch.name}: {err}") from err
            steps = steps_from_turns(session.turns, 0, branch.page, branch.labels)
            metrics = metrics_of(pipe, steps) if branch.page == "world" else None
            outcomes.append(Outcome(branch.page, branch.name, session, steps, metrics, model))
        return outcomes

    return work

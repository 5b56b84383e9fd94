"""The server's sessions: made, found, saved after every finished turn, restored on start.

Each session lives in ROOT/<id>/ in the store's atomic format (workbench.store) with a
K/V snapshot, so a server killed at any moment restarts with every finished turn: from
the snapshot when it matches the manifest, else by re-encoding the turns. Ids are made
here (random hex); a client's string is only ever compared against them, never joined
to a path.

Only the gate's one running job touches a `Session`; readers see `Entry.turns`, the
transcript as of the last finished job.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from bagel.errors import BagelError
from bagel.pipeline import BagelPipeline
from workbench import store
from workbench.params import ContextLimit
from workbench.session import Session
from workbench.store import session_format
from workbench.transcript import Turn

log = logging.getLogger(__name__)

ID = re.compile(r"[0-9a-f]{32}")
DELETED = ".deleted-"  # a folder being removed; a restart finishes the job


class NotFound(BagelError):
    """No session (or job) with this id: a 404."""


class TooMany(BagelError):
    """A client over its share (sessions, or jobs in the queue): a 429."""


@dataclass
class Entry:
    id: str
    session: Session
    folder: Path
    turns: tuple[Turn, ...]  # the finished turns, as readers see them
    deleted: bool = False  # jobs still queued for it are then refused
    owner: str | None = None  # the client that made it (None: restored from disk)


class Registry:
    """max_sessions: the most sessions one client (an address) may have made and not
    deleted; sessions restored from disk count for no one."""

    def __init__(self, root: Path, pipe: BagelPipeline, max_sessions: int | None = None):
        self.root, self.pipe, self.max_sessions = Path(root), pipe, max_sessions
        self.root.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()

    def restore(self) -> list[str]:
        """Load every saved session under root; returns the problems (folders skipped)."""
        problems = []
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(DELETED):
                shutil.rmtree(folder, ignore_errors=True)
            elif ID.fullmatch(folder.name) and folder.is_dir():
                try:
                    session = _load(folder, self.pipe)
                except BagelError as err:
                    problems.append(f"{folder}: not restored: {err}")
                    continue
                self._put(Entry(folder.name, session, folder, tuple(session.turns)))
        return problems

    def create(self, limit: ContextLimit | None = None, owner: str | None = None) -> Entry:
        return self.add(Session(self.pipe, limit=limit or ContextLimit()), owner)

    def add(self, session: Session, owner: str | None = None) -> Entry:
        """Register a session under a new id and save it (TooMany past the owner's share)."""
        self.check_room(owner)
        entry = Entry(secrets.token_hex(16), session, Path(), (), owner=owner)
        entry.folder = self.root / entry.id
        self.commit(entry)
        return self._put(entry)

    def check_room(self, owner: str | None) -> None:
        """Raise TooMany if `owner` already has max_sessions sessions."""
        if owner is None or self.max_sessions is None:
            return
        held = sum(entry.owner == owner for entry in self.all())
        if held >= self.max_sessions:
            raise TooMany(
                f"this client already has {held} sessions, the most allowed "
                f"({self.max_sessions}): delete one first"
            )

    def get(self, session_id: str) -> Entry:
        with self._lock:
            entry = self._entries.get(session_id)
        if entry is None:
            raise NotFound(f"no session {session_id!r}")
        return entry

    def all(self) -> list[Entry]:
        with self._lock:
            return list(self._entries.values())

    def commit(self, entry: Entry) -> None:
        """Save the session (atomic, with its K/V snapshot), then show its turns."""
        store.save(entry.session, entry.folder, snapshot=True)
        entry.turns = tuple(entry.session.turns)

    def delete(self, entry: Entry) -> None:
        with self._lock:
            self._entries.pop(entry.id, None)
        entry.deleted = True
        doomed = entry.folder.with_name(DELETED + entry.id)
        os.replace(entry.folder, doomed)  # gone in one step; the files follow
        shutil.rmtree(doomed, ignore_errors=True)

    def _put(self, entry: Entry) -> Entry:
        with self._lock:
            self._entries[entry.id] = entry
        return entry


def _load(folder: Path, pipe: BagelPipeline) -> Session:
    """From the K/V snapshot; if it does not match the manifest (killed between the two
    renames), from the turns."""
    try:
        return store.load(folder, pipe)
    except session_format.SessionFileError as err:
        if not (folder / session_format.SNAPSHOT).exists():
            raise
        log.warning("%s; re-encoding its turns instead", err)
        return store.load(folder, pipe, use_snapshot=False)

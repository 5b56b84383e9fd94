"""What the HTTP layer asks of the model: one queue, tasks on sessions, their outcomes.

Every piece of work that reads or changes a session or runs the model is a `Task`: a
`workbench.app.jobs.Job` behind the model's one `Gate` (first come, first served, with
queue positions; cancelled through the progress callback). Fast verbs (rewind, fork,
delete) queue too, so nothing ever runs beside a generation on the same session.

A task that changes a session saves it before it counts as done; a chain saves it after
every step as well, so a process killed mid-chain keeps the finished turns. A verb that fails or is
cancelled has already undone itself (Session and the chains are transactional); a save
that fails is undone here, so the session and its folder keep their last finished state.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from bagel.errors import BagelError
from bagel.inputs import ProgressFn
from bagel.pipeline import BagelPipeline
from workbench.app.jobs import Gate, Job
from workbench.server.sessions import Entry, NotFound, Registry, TooMany
from workbench.session import Session

log = logging.getLogger(__name__)

KEEP_TASKS = 1024  # finished tasks kept for GET /jobs/{id}, oldest dropped first
MAX_JOBS = 32  # default: queued and running jobs per client
MAX_SESSIONS = 64  # default: sessions per client
# the request being answered (set by the Guard middleware): who asks, and whether they
# are still there
CALLER: ContextVar[Request | None] = ContextVar("caller", default=None)


def caller() -> str | None:
    """The address of the client whose request is being answered (None outside one)."""
    request = CALLER.get()
    return None if request is None or request.client is None else request.client.host


Verb = Callable[[Session, ProgressFn], "Done"]


@dataclass
class Done:
    """A verb's answer besides its turns (see schemas.TurnResult)."""

    text: str | None = None
    scores: list[float] | None = None
    stopped: str | None = None
    new_session: str | None = None
    report: dict[str, Any] | None = None
    download: bytes | None = None  # export, archive: a zip ...
    filename: str = "export.zip"  # ... and the name to save it under


@dataclass
class Refused:
    """The workbench refused the request (a BagelError): nothing changed."""

    message: str
    status: int = 400


@dataclass
class Outcome:
    entry: Entry | None
    first_turn: int  # the turns from here on are the verb's
    done: Done


@dataclass
class Task:
    id: str
    title: str
    session: str | None
    job: Job
    client: str | None = None
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None

    @property
    def result(self) -> Outcome | Refused | None:
        return self.job.result

    @property
    def queued_seconds(self) -> float:
        return (self.started or time.monotonic()) - self.created

    @property
    def run_seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started


class Service:
    """max_jobs: the most queued and running jobs one client (an address) may have."""

    def __init__(self, pipe: BagelPipeline, registry: Registry, max_jobs: int | None = None):
        self.pipe, self.registry, self.gate = pipe, registry, Gate()
        self.max_jobs = max_jobs
        self._tasks: OrderedDict[str, Task] = OrderedDict()
        self._lock = threading.Lock()

    def on_session(self, entry: Entry, title: str, verb: Verb, saves: bool = True) -> Task:
        """Queue `verb(session, progress)`; with `saves`, save the session after it."""

        def work(session: Session, progress: ProgressFn) -> Outcome:
            if entry.deleted:  # deleted while this job waited: nothing to save it into
                raise NotFound(f"no session {entry.id!r} (deleted)")
            first, shown = len(session.turns), entry.turns
            try:
                done = verb(session, progress)
            except BaseException:
                if entry.turns is not shown:  # saved turn by turn (a chain), then undone
                    self._save_undone(entry)
                raise
            if saves:
                try:
                    self.registry.commit(entry)
                except BaseException:
                    session.rewind(len(session.turns) - first)
                    raise
            return Outcome(entry, first, done)

        return self._submit(title, entry, work)

    def _save_undone(self, entry: Entry) -> None:
        """Save a session again after a verb that saved some of its turns failed and
        rewound them, so that its folder holds its last finished state again."""
        try:
            self.registry.commit(entry)
        except Exception:
            log.exception("session %s: saving it after an undone chain failed", entry.id)

    def on_model(self, title: str, work: Callable[[ProgressFn], Done]) -> Task:
        """Queue work that makes or reads no live session (e.g. a new one, a replay)."""
        return self._submit(title, None, lambda _s, progress: Outcome(None, 0, work(progress)))

    def unfinished(self) -> list[Task]:
        """Queued and running tasks, in arrival order."""
        with self._lock:
            return [t for t in self._tasks.values() if not t.job.finished]

    def cancel_all(self) -> None:
        """Cancel every queued and running task (the server is stopping): each ends at its
        next step or leaves the line, its session as before it."""
        for task in self.unfinished():
            task.job.cancel()

    def task(self, task_id: str) -> Task | None:
        with self._lock:
            return self._tasks.get(task_id)

    def _submit(
        self, title: str, entry: Entry | None, work: Callable[[Session | None, ProgressFn], Any]
    ) -> Task:
        task: Task

        def run(progress: ProgressFn) -> Outcome | Refused:
            task.started = time.monotonic()
            try:
                return work(entry.session if entry else None, progress)
            except NotFound as err:
                return Refused(str(err), 404)
            except TooMany as err:
                return Refused(str(err), 429)
            except BagelError as err:  # bad input: the verb changed nothing
                return Refused(str(err))
            finally:
                task.finished = time.monotonic()

        client = caller()
        task_id = secrets.token_hex(8)
        job = Job(title, run, self.gate)
        task = Task(task_id, title, entry.id if entry else None, job, client)
        with self._lock:
            held = sum(t.client == client for t in self._tasks.values() if not t.job.finished)
            if client is not None and self.max_jobs is not None and held >= self.max_jobs:
                raise TooMany(
                    f"this client already has {held} jobs queued or running, the most "
                    f"allowed ({self.max_jobs}): wait for one to finish"
                )
            self._tasks[task_id] = task
            while len(self._tasks) > KEEP_TASKS:
                oldest = next(iter(self._tasks))
                if not self._tasks[oldest].job.finished:
                    break
                del self._tasks[oldest]
        task.job.start()
        return task

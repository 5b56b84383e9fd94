"""Background jobs: one generation per model at a time, a visible line, cancellation.

A page never runs the model in its own script run: it starts a `Job`, whose thread waits
in the model's `Gate` (first come, first served) and then runs its work. The page reads
the job's state to draw the queue position or the progress bar. Cancelling sets a flag
that the job's progress callback checks after every denoising step; it then raises
`Cancelled`, which the pipeline's progress contract turns into "stop sampling, contexts
untouched", and the work rewinds the turns it added (see actions.py), so a cancelled
or failed job leaves the user's session holding what it held before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from bagel.errors import BagelError
from bagel.inputs import ProgressFn

log = logging.getLogger(__name__)

STATES = ("queued", "running", "done", "cancelled", "failed")
POLL_SECONDS = 0.1  # how often a queued job looks at its cancel flag


class Cancelled(Exception):
    """The user cancelled the job (raised from the progress callback)."""


class Gate:
    """Admits one job at a time, in arrival order; the others wait in `line`."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._line: list[object] = []  # waiting owners, first in line first
        self.running: object | None = None

    def enter(self, owner: object, cancelled: threading.Event) -> bool:
        """Wait for this owner's turn; False (and out of line) if cancelled meanwhile."""
        with self._cond:
            self._line.append(owner)
            try:
                while self.running is not None or self._line[0] is not owner:
                    if cancelled.is_set():
                        return False
                    self._cond.wait(POLL_SECONDS)
                if cancelled.is_set():
                    return False
                self.running = owner
                return True
            finally:
                self._line.remove(owner)
                self._cond.notify_all()

    def leave(self, owner: object) -> None:
        with self._cond:
            if self.running is owner:
                self.running = None
            self._cond.notify_all()

    def position(self, owner: object) -> int | None:
        """How many jobs are ahead of this waiting owner (the running one included)."""
        with self._cond:
            if owner not in self._line:
                return None
            return self._line.index(owner) + (self.running is not None)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._line)

    @property
    def busy(self) -> bool:
        return self.running is not None


class Job:
    """Runs `work(progress)` in a thread once the gate admits it.

    state: "queued" (waiting in the gate), "running", then "done" (result set),
    "cancelled" or "failed" (error set: a message for the user, never a traceback).
    """

    def __init__(self, title: str, work: Callable[[ProgressFn], Any], gate: Gate):
        self.title, self.gate = title, gate
        self._work = work
        self.state = "queued"
        self.steps_done, self.steps_total = 0, 0
        self.phase, self.unit = "", "step"  # what the work is doing now, what it counts
        self.result: Any = None
        self.error: str | None = None
        self.exception: BaseException | None = None  # what failed (words.for_people reads it)
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"job: {title}", daemon=True)

    def start(self) -> Job:
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Stop after the current denoising step (or leave the line, if still waiting)."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self.finished

    @property
    def finished(self) -> bool:
        return self.state in ("done", "cancelled", "failed")

    @property
    def position(self) -> int | None:
        return self.gate.position(self)

    def progress(self, done: int, total: int) -> None:
        """The pipeline's progress callback: record, then honour a cancel request."""
        self.steps_done, self.steps_total = done, total
        if self._cancel.is_set():
            raise Cancelled(self.title)

    def set_phase(self, phase: str, unit: str = "step") -> None:
        """Name what the work does next (its counts start again); honours a cancel."""
        self.phase, self.unit = phase, unit
        self.progress(0, 0)

    def _run(self) -> None:
        if not self.gate.enter(self, self._cancel):
            self.state = "cancelled"
            return
        try:
            self.state = "running"
            self.result = self._work(self.progress)
            self.state = "done"
        except Cancelled:
            self.state = "cancelled"
        except BagelError as err:  # bad input: the message says what to fix
            self._fail(str(err), err)
        except BaseException as err:  # a bug, or a native library's panic (no Exception):
            # a short message here, the traceback in the log; a worker thread has no
            # process to exit or interrupt, so even SystemExit only fails its job
            log.exception("job %r failed", self.title)
            self._fail(f"{type(err).__name__}: {err}", err)
        finally:
            self.gate.leave(self)

    def _fail(self, message: str, exception: BaseException) -> None:
        self.error, self.exception = message, exception
        self.state = "failed"


def set_phase(progress: ProgressFn, phase: str, unit: str = "step") -> None:
    """Name the work's next phase when `progress` is a Job's (a plain callback has none)."""
    job = getattr(progress, "__self__", None)
    if isinstance(job, Job):
        job.set_phase(phase, unit)

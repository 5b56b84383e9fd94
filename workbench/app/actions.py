"""The work each button starts, as functions `work(progress) -> Outcome` for a Job.

A work appends to the branch's own session (a regenerated beat: to a fork of it, made
when the button is pressed), so a session made in the app has the KV layout a straight
replay of it has, and replays to identical frames. A work that fails or is cancelled
rewinds what it appended (the chains do so themselves). Pages draw a branch from its
steps, which change only when the page applies the finished job's outcome; while a job
runs they keep every button that reads or changes a session disabled.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bagel.pipeline import BagelPipeline, ProgressFn
from workbench import chains, store
from workbench.app.branches import Branch, Step, Workspace, steps_from_turns
from workbench.app.files import pack_folder
from workbench.export import export_session
from workbench.metrics import FrameMetrics, frame_metrics
from workbench.params import GenerationParams
from workbench.session import Session

Chain = Callable[[Session, ProgressFn], chains.ChainResult | None]
Work = Callable[[ProgressFn], object]


@dataclass(frozen=True)
class Outcome:
    """A branch's new state: continue `branch`, or (branch None) make a new branch."""

    page: str
    branch: str | None
    session: Session
    steps: list[Step]
    metrics: list[FrameMetrics] | None = None


def apply(workspace: Workspace, outcome: Outcome) -> Branch:
    """Adopt a finished job's outcome into the workspace; returns the branch it changed."""
    if outcome.branch in workspace.branches:
        branch = workspace.branches[outcome.branch]
        branch.update(outcome.session, outcome.steps, outcome.metrics)
        return branch
    return workspace.add(outcome.page, outcome.session, outcome.steps, outcome.metrics)


def _on_branch(
    branch: Branch,
    chain: Chain,
    label: str = "",
    new_branch_from: int | None = None,
) -> Work:
    """Work that runs `chain` on the branch's session, or with `new_branch_from` on a
    fork of it cut back to that step, and reads the new steps off the turns (frames
    labelled by the chain, else `label`)."""
    session, kept = branch.session, branch.steps
    if new_branch_from is not None:
        session, kept = branch.session.fork(), branch.steps[:new_branch_from]
        session.rewind(len(session.turns) - branch.steps[new_branch_from].start)
    start = len(session.turns)

    def work(progress: ProgressFn) -> Outcome:
        try:
            result = chain(session, progress)
        except BaseException:
            session.rewind(len(session.turns) - start)
            raise
        if result is not None:
            labels = {f.turn: f.label for f in result.frames}
        else:
            labels = dict.fromkeys(range(start, len(session.turns)), label)
        steps = kept + steps_from_turns(session.turns, start, branch.page, labels)
        metrics = _metrics(session.pipe, steps) if branch.page == "world" else None
        target = None if new_branch_from is not None else branch.name
        return Outcome(branch.page, target, session, steps, metrics)

    return work


def _metrics(pipe: BagelPipeline, steps: list[Step]) -> list[FrameMetrics]:
    images = [shot.image for step in steps for shot in step.shots]
    return frame_metrics(pipe, images) if images else []


# -- world ----------------------------------------------------------------------------


def start_from_prompt(branch: Branch, prompt: str, params: GenerationParams) -> Work:
    def chain(session: Session, progress: ProgressFn) -> None:
        session.add_text(prompt)
        session.generate_image(params, progress)

    return _on_branch(branch, chain, label="start")


def start_from_image(branch: Branch, image: Image.Image, seed: int = 0) -> Work:
    def chain(session: Session, progress: ProgressFn) -> None:
        session.add_image(image, seed=seed)

    return _on_branch(branch, chain, label="start")


def navigate(branch: Branch, action: str, params: GenerationParams) -> Work:
    return _on_branch(branch, lambda s, p: chains.navigate(s, [action], params, progress=p))


def rotate(branch: Branch, degrees: float, steps: int, axis: str, params: GenerationParams) -> Work:
    return _on_branch(
        branch, lambda s, p: chains.rotate(s, degrees, steps, axis, params, progress=p)
    )


def predict(
    branch: Branch,
    frames: int,
    params: GenerationParams,
    mode: str = "autoregressive",
    window: int = 1,
    schedule: str = "autoregressive",
) -> Work:
    return _on_branch(
        branch,
        lambda s, p: chains.predict(s, frames, params, mode, window, schedule, progress=p),
    )


# -- story ----------------------------------------------------------------------------


def story(
    branch: Branch, beats: list[chains.Beat], params: GenerationParams, caption: bool
) -> Work:
    return _on_branch(branch, lambda s, p: chains.story(s, beats, params, caption, progress=p))


def regenerate(branch: Branch, index: int, params: GenerationParams, caption: bool) -> Work:
    """A new branch: the story up to beat `index` (from 0), then that beat and every later
    one made again (their texts and references) with `params` (a new seed, say)."""
    if not 0 <= index < len(branch.steps):
        raise IndexError(f"beat {index + 1} is not on this branch ({len(branch.steps)} beats)")
    beats = [chains.Beat(s.text or "", s.reference) for s in branch.steps[index:]]
    return _on_branch(
        branch,
        lambda s, p: chains.story(s, beats, params, caption, progress=p),
        new_branch_from=index,
    )


def edit(branch: Branch, instruction: str, params: GenerationParams, think: bool) -> Work:
    return _on_branch(
        branch, lambda s, p: chains.edit(s, instruction, params, think=think, progress=p)
    )


# -- saved sessions -------------------------------------------------------------------


def open_saved(
    folder: Path, page: str, pipe: BagelPipeline, allow_other: bool, unpacked: bool = False
) -> Work:
    """Rebuild a saved session (its turns' appends run on the model) as a new branch.
    An `unpacked` folder (an uploaded archive) is removed when it does not open."""

    def work(_progress: ProgressFn) -> Outcome:
        try:
            session = store.load(folder, pipe, allow_other_checkpoint=allow_other)
        except BaseException:
            if unpacked:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        steps = steps_from_turns(session.turns, 0, page)
        metrics = _metrics(pipe, steps) if page == "world" else None
        return Outcome(page, None, session, steps, metrics)

    return work


def replay_saved(folder: Path, pipe: BagelPipeline, allow_other: bool) -> Work:
    return lambda _progress: store.replay(folder, pipe, allow_other_checkpoint=allow_other)


def downloads(branch: Branch) -> Work:
    """Every download of the branch, {what: bytes} (what: files.DOWNLOADS), from one
    export_session run (its metrics need the model, hence a job)."""
    session = branch.session
    include = "all" if branch.page == "world" else "generated"

    def work(_progress: ProgressFn) -> dict[str, bytes]:
        with tempfile.TemporaryDirectory(prefix="workbench-export-") as tmp:
            out = export_session(session, Path(tmp) / "export", include=include)
            return {
                "frames": pack_folder(out / "frames"),
                "gif": (out / "frames.gif").read_bytes(),
                "mp4": (out / "frames.mp4").read_bytes(),
                "sheet": (out / "contact_sheet.png").read_bytes(),
                "story": (out / "story.html").read_bytes(),
                "session": pack_folder(out / "session"),
            }

    return work

"""The work each button starts, as functions `work(progress) -> Outcome` for a Job.

A work appends to the branch's own session (a regenerated beat: to a fork of it, made
when the button is pressed), so a session made in the app has the KV layout a straight
replay of it has, and replays to identical frames. A work that fails or is cancelled
rewinds what it appended (the chains do so themselves). Pages draw a branch from its
steps, which change only when the page applies the finished job's outcome; while a job
runs they keep every button that reads or changes a session disabled.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bagel.inputs import ProgressFn
from bagel.pipeline import BagelPipeline
from workbench import chains, store
from workbench.app.branches import Branch, Step, Workspace, steps_from_turns
from workbench.app.files import pack_folder
from workbench.app.jobs import set_phase
from workbench.export import export_session, session_frames
from workbench.media import story_page
from workbench.metrics import FrameMetrics, frame_metrics
from workbench.params import GenerationParams
from workbench.session import Session
from workbench.store.replay_report import ReplayReport

Chain = Callable[[Session, ProgressFn], chains.ChainResult | None]
Work = Callable[[ProgressFn], object]


@dataclass(frozen=True)
class Outcome:
    """A branch's new state: continue `branch` (made with that name if it is gone), or
    (branch None) make a new branch."""

    page: str
    branch: str | None
    session: Session
    steps: list[Step]
    metrics: list[FrameMetrics] | None = None
    model: str = ""  # the model the session runs on (Branch.model)


def apply(workspace: Workspace, outcome: Outcome) -> Branch:
    """Adopt a finished job's outcome into the workspace; returns the branch it changed."""
    if outcome.branch in workspace.branches:
        branch = workspace.branches[outcome.branch]
        branch.update(outcome.session, outcome.steps, outcome.metrics)
        workspace.current[branch.page] = branch.name
        return branch
    return workspace.add(
        outcome.page,
        outcome.session,
        outcome.steps,
        outcome.metrics,
        name=outcome.branch,
        model=outcome.model,
    )


def human_label(label: str, mode: str = "") -> str:
    """A chain's frame label in words: "turn_left" -> "turn left", "30deg" -> "rotate
    30°", "t+1" -> "forcing t+1" (mode: how the frames were predicted), "round-2" ->
    "edit round 2"."""
    if label in chains.ACTIONS:
        return label.replace("_", " ")
    if label.endswith("deg"):
        return f"rotate {label.removesuffix('deg')}°"
    if label.startswith("t+"):
        return f"{mode} {label}".strip()
    for prefix, words in (("round-", "edit round"), ("beat-", "beat")):
        if label.startswith(prefix):
            return f"{words} {label.removeprefix(prefix)}"
    return label


def _on_branch(
    branch: Branch,
    chain: Chain,
    label: str = "",
    new_branch_from: int | None = None,
    mode: str = "",
) -> Work:
    """Work that runs `chain` on the branch's session, or with `new_branch_from` on a
    fork of it cut back to that step, and reads the new steps off the turns (frames
    labelled by the chain, else `label`)."""
    session, kept = branch.session, branch.steps
    if new_branch_from is not None:
        session, kept = branch.session.fork(), branch.steps[:new_branch_from]
        session.rewind(len(session.turns) - branch.steps[new_branch_from].start)
    start = len(session.turns)
    known = branch.metrics[: sum(len(step.shots) for step in kept)]

    def work(progress: ProgressFn) -> Outcome:
        try:
            result = chain(session, progress)
            if result is not None:
                labels = {f.turn: human_label(f.label, mode) for f in result.frames}
            else:
                labels = dict.fromkeys(range(start, len(session.turns)), label)
            steps = kept + steps_from_turns(session.turns, start, branch.page, labels)
            metrics = None
            if branch.page == "world":  # a Cancel here too leaves the session as it was
                set_phase(progress, "consistency metrics of the new frames")
                metrics = metrics_of(session.pipe, steps, known)
        except BaseException:
            session.rewind(len(session.turns) - start)
            raise
        target = None if new_branch_from is not None else branch.name
        return Outcome(branch.page, target, session, steps, metrics, branch.model)

    return work


def metrics_of(
    pipe: BagelPipeline, steps: list[Step], known: list[FrameMetrics] | None = None
) -> list[FrameMetrics]:
    """Every frame's metrics; `known` (those of the first frames) are kept, since a
    frame's metrics depend on the first, the previous and itself only."""
    images = [shot.image for step in steps for shot in step.shots]
    known = list(known or [])[: len(images)]
    if not images or len(known) == len(images):
        return known
    if not known:
        return frame_metrics(pipe, images)
    # the new frames after [first, previous]: their drift to the first, PSNR/SSIM to the
    # previous frame, renumbered to their place
    context = [images[0], images[len(known) - 1]] if len(known) > 1 else [images[0]]
    fresh = frame_metrics(pipe, context + images[len(known) :])[len(context) :]
    return known + [dataclasses.replace(m, index=len(known) + i) for i, m in enumerate(fresh)]


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


def navigate(branch: Branch, moves: list[str], params: GenerationParams) -> Work:
    """The moves in order, one frame each, as one job (a Cancel rewinds them all)."""
    return _on_branch(branch, lambda s, p: chains.navigate(s, moves, params, progress=p))


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
        mode="forcing" if mode == "forcing" else "autoregressive",
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
    folder: Path,
    page: str,
    pipe: BagelPipeline,
    allow_other: bool,
    discard: bool = False,
    model: str = "",
) -> Work:
    """Rebuild a saved session (its turns' appends run on the model `pipe`, loaded from
    `model`) as a new branch. discard: remove `folder` if the session cannot be opened
    (or the user cancels), for a just-unpacked upload that should leave nothing behind."""

    def work(progress: ProgressFn) -> Outcome:
        set_phase(progress, "re-encoding the turns", "turn")
        try:
            session = store.load(
                folder, pipe, allow_other_checkpoint=allow_other, progress=progress
            )
        except BaseException:
            if discard:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        steps = steps_from_turns(session.turns, 0, page)
        metrics = None
        if page == "world":
            set_phase(progress, "consistency metrics")
            metrics = metrics_of(pipe, steps)
        return Outcome(page, None, session, steps, metrics, model)

    return work


def replay_saved(folder: Path, pipe: BagelPipeline, allow_other: bool) -> Work:
    def work(progress: ProgressFn) -> ReplayReport:
        set_phase(progress, "regenerating and comparing", "turn")
        return store.replay(folder, pipe, allow_other_checkpoint=allow_other, progress=progress)

    return work


def downloads(branch: Branch) -> Work:
    """Every download of the branch, {what: bytes} (what: files.DOWNLOADS), from one
    export_session run (its metrics need the model, hence a job). The story page embeds
    its images, so the one file opens anywhere."""
    session = branch.session
    include = "all" if branch.page == "world" else "generated"

    def work(progress: ProgressFn) -> dict[str, bytes]:
        set_phase(progress, "writing the files", "part")
        with tempfile.TemporaryDirectory(prefix="workbench-export-") as tmp:
            formats = ("png", "gif", "mp4", "sheet", "session")
            out = export_session(
                session, Path(tmp) / "export", formats, include=include, progress=progress
            )
            frames = [f.frame for f in session_frames(session, include)]
            page = story_page(frames, Path(tmp) / "story.html", title=branch.name)
            return {
                "frames": pack_folder(out / "frames"),
                "gif": (out / "frames.gif").read_bytes(),
                "mp4": (out / "frames.mp4").read_bytes(),
                "sheet": (out / "contact_sheet.png").read_bytes(),
                "story": page.read_bytes(),
                "session": pack_folder(out / "session"),
            }

    return work

"""World-modeling and interleaved chains over a Session (docs/chains.md).

navigate, rotate, predict, story, edit and agent each validate all their inputs, then
append turns to the session step by step, every step seeing every earlier frame, and
return the frames they generated plus a trace of every turn they appended.

A chain is one transaction: if any of its turns fails, or `progress` raises to cancel,
the session is rewound to where the chain started and the error propagates. `on_turn`,
if given, is called after every step's turns are in the session (the server saves the
session there, so a process killed mid-chain keeps the finished turns; a chain that
fails or is cancelled is saved again once rewound).

Choices (the edit judge, the agent's action) are constrained: each allowed answer is
scored by the model's log-likelihood (`Session.choose`) and the best one is taken; no
free text is parsed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from bagel.errors import BagelError, InputError
from bagel.forcing import check_forcing
from bagel.inputs import ProgressFn
from workbench.chains.actions import ACTIONS, DEFAULT_TEMPLATES
from workbench.chains.checks import (
    check_actions,
    check_choice,
    check_common,
    check_count,
    check_field_text,
    check_flag,
    check_list,
    fill_template,
    require_image,
)
from workbench.files import check_regular_file
from workbench.params import GenerationParams
from workbench.session import Session

AXES = ("vertical", "horizontal", "depth")  # turntable (yaw), tilt (pitch), in-plane (roll)
ROTATE_TEMPLATE = "Rotate the object {degrees} degrees about its {axis} axis."
PREDICT_MODES = ("autoregressive", "forcing")
SCHEDULES = ("autoregressive", "pyramid", "uniform")
CAPTION_QUESTION = "Describe the last image in one sentence."
JUDGE_QUESTION = 'Does the last image carry out the instruction "{instruction}"? Answer yes or no.'
JUDGE_OPTIONS = ("yes", "no")
DONE = "done"  # the agent's extra option: the goal is reached
AGENT_QUESTION = (
    "The goal: {goal}\n"
    "Looking at the current view, which one action brings the camera toward the goal? "
    'Answer with one of: {options}. Answer "done" if the goal is reached.'
)


@dataclass(frozen=True)
class Frame:
    """A generated image of a chain."""

    image: Image.Image
    caption: str | None  # the model's caption (story with caption=True), else None
    turn: int  # index of its image turn in session.turns
    label: str  # the action, angle, time step, beat or round it shows


@dataclass(frozen=True)
class TraceStep:
    """One turn a chain appended, named by the part it plays in the chain."""

    role: str  # "user" or "model"
    kind: str  # instruction, reference, system, question, thinking, image, caption,
    #            judgement or action (docs/chains.md)
    text: str | None
    image: Image.Image | None
    turn: int  # index in session.turns
    scores: dict[str, float] | None = None  # a choice: log-probability of every option


@dataclass(frozen=True)
class ChainResult:
    kind: str
    frames: list[Frame]
    trace: list[TraceStep]
    stopped: str  # "done", "goal", "max_steps", "judged_ok" or "max_rounds"


@dataclass(frozen=True)
class Beat:
    """A story beat: its text, after an optional reference image (e.g. a character)."""

    text: str
    image: Image.Image | str | bytes | None = None


# -- the chains ---------------------------------------------------------------------------


def navigate(
    session: Session,
    actions: list[str],
    params: GenerationParams | None = None,
    templates: dict[str, str] | None = None,
    progress: ProgressFn | None = None,
    on_turn: Callable[[], None] | None = None,
) -> ChainResult:
    """Per action: its instruction (user text), then the next frame.

    Args:
        actions: names from ACTIONS, in order; one frame each.
        templates: instruction text per action, overriding DEFAULT_TEMPLATES.
        progress: (denoising steps done, total) over the whole chain.
    """
    params = check_common(session, params, progress)
    actions = check_actions(actions)
    instructions = instructions_for(templates)
    with _Run(session, "navigate", params, len(actions), progress, on_turn) as run:
        for action in actions:
            run.text(instructions[action])
            run.image(action)
    return run.result("done")


def rotate(
    session: Session,
    degrees: float,
    steps: int,
    axis: str = "vertical",
    params: GenerationParams | None = None,
    template: str | None = None,
    progress: ProgressFn | None = None,
    on_turn: Callable[[], None] | None = None,
) -> ChainResult:
    """Turntable / multiview: `steps` times, the rotation instruction then a frame.

    Args:
        degrees: rotation per step (any finite number; the sign is passed on as written).
        axis: one of AXES.
        template: the instruction, with `{degrees}` and optionally `{axis}`
            (default ROTATE_TEMPLATE).
    """
    params = check_common(session, params, progress)
    if isinstance(degrees, bool) or not isinstance(degrees, int | float):
        raise InputError(f"degrees must be a number, got {degrees!r}")
    if not math.isfinite(degrees):
        raise InputError(f"degrees must be finite, got {degrees!r}")
    check_count("steps", steps)
    check_choice("axis", axis, AXES)
    template = ROTATE_TEMPLATE if template is None else template
    instruction = fill_template(
        "template", template, ("degrees",), degrees=f"{degrees:g}", axis=axis
    )
    require_image(session, "rotate")
    with _Run(session, "rotate", params, steps, progress, on_turn) as run:
        for k in range(1, steps + 1):
            run.text(instruction)
            run.image(f"{degrees * k:g}deg")
    return run.result("done")


def predict(
    session: Session,
    frames: int,
    params: GenerationParams | None = None,
    mode: str = "autoregressive",
    window: int = 1,
    schedule: str = "autoregressive",
    instruction: str | None = None,
    progress: ProgressFn | None = None,
    on_turn: Callable[[], None] | None = None,
) -> ChainResult:
    """The next `frames` frames of the sequence in the session.

    mode "autoregressive": per frame, the instruction (if any), then the frame, with every
    earlier frame in context (window 1, schedule "autoregressive"). mode "forcing": the
    instruction (if any) once, then the frames by diffusion forcing
    (`Session.predict_frames`): up to `window` frames denoised together, their noise
    levels staggered by `schedule`; with window 1 it makes the same frames as
    autoregressive mode without an instruction.
    """
    params = check_common(session, params, progress)
    check_count("frames", frames)
    check_choice("mode", mode, PREDICT_MODES)
    check_count("window", window)
    check_choice("schedule", schedule, SCHEDULES)
    if instruction is not None:
        check_field_text("instruction", instruction)
    require_image(session, "predict")
    if mode == "autoregressive" and (window != 1 or schedule != "autoregressive"):
        raise InputError(
            f"window {window} / schedule {schedule!r} apply to mode='forcing'; "
            "autoregressive prediction is window 1, schedule 'autoregressive'"
        )
    if mode == "forcing":
        check_forcing(schedule, window, frames)
    with _Run(session, "predict", params, frames, progress, on_turn) as run:
        if mode == "forcing":
            if instruction is not None:
                run.text(instruction)
            run.forced_frames(frames, window, schedule)
            return run.result("done")
        for k in range(1, frames + 1):
            if instruction is not None:
                run.text(instruction)
            run.image(f"t+{k}")
    return run.result("done")


def story(
    session: Session,
    beats: list[str | Beat],
    params: GenerationParams | None = None,
    caption: bool = False,
    progress: ProgressFn | None = None,
    on_turn: Callable[[], None] | None = None,
) -> ChainResult:
    """Per beat: its reference image (if any), its text, the frame, and with `caption`
    the model's one-sentence caption of it. Earlier beats stay in context."""
    params = check_common(session, params, progress)
    check_flag("caption", caption)
    beats = [_beat(session, i, beat) for i, beat in enumerate(check_list("beats", beats))]
    with _Run(session, "story", params, len(beats), progress, on_turn) as run:
        for i, beat in enumerate(beats, 1):
            if beat.image is not None:
                run.reference(beat.image)
            run.text(beat.text)
            run.image(f"beat-{i}")
            if caption:
                run.caption(CAPTION_QUESTION)
    return run.result("done")


def edit(
    session: Session,
    instruction: str,
    params: GenerationParams | None = None,
    think: bool = False,
    max_rounds: int = 1,
    progress: ProgressFn | None = None,
    on_turn: Callable[[], None] | None = None,
) -> ChainResult:
    """Closed-loop editing of the last image.

    A round: the instruction (with `think`: the planning prompt, the instruction and the
    model's thinking), the edited frame, then the judge question and the model's
    constrained yes/no. "yes" stops with "judged_ok"; "no" starts another round with the
    same instruction, up to `max_rounds` ("max_rounds"). Default params: the edit ones.
    """
    params = check_common(session, params, progress, GenerationParams.edit())
    check_field_text("instruction", instruction)
    check_flag("think", think)
    check_count("max_rounds", max_rounds)
    require_image(session, "edit")
    judge = JUDGE_QUESTION.format(instruction=instruction)
    with _Run(session, "edit", params, max_rounds, progress, on_turn) as run:
        for r in range(1, max_rounds + 1):
            if think:
                run.think_image(instruction, f"round-{r}")
            else:
                run.text(instruction)
                run.image(f"round-{r}")
            if run.choose(judge, list(JUDGE_OPTIONS), "judgement") == "yes":
                return run.result("judged_ok")
    return run.result("max_rounds")


def agent(
    session: Session,
    goal: str,
    actions: list[str] = ACTIONS,
    params: GenerationParams | None = None,
    max_steps: int = 8,
    templates: dict[str, str] | None = None,
    progress: ProgressFn | None = None,
    on_turn: Callable[[], None] | None = None,
) -> ChainResult:
    """Goal-seeking loop: per step, the goal question and the model's constrained choice
    among `actions` + "done"; "done" stops with "goal", an action is rendered as in
    `navigate` (its instruction, then the frame); after `max_steps` frames: "max_steps"."""
    params = check_common(session, params, progress)
    check_field_text("goal", goal)
    actions = check_actions(actions)
    if len(set(actions)) != len(actions):
        raise InputError(f"actions must be distinct, got {actions}")
    check_count("max_steps", max_steps)
    instructions = instructions_for(templates)
    require_image(session, "agent")
    options = [*actions, DONE]
    question = AGENT_QUESTION.format(goal=goal, options=", ".join(options))
    with _Run(session, "agent", params, max_steps, progress, on_turn) as run:
        for _ in range(max_steps):
            action = run.choose(question, options, "action")
            if action == DONE:
                return run.result("goal")
            run.text(instructions[action])
            run.image(action)
    return run.result("max_steps")


# -- running a chain ----------------------------------------------------------------------


class _Run:
    """Appends a chain's turns, names them in the trace, and undoes them all on failure."""

    def __init__(
        self,
        session: Session,
        kind: str,
        params: GenerationParams,
        planned_frames: int,
        progress: ProgressFn | None,
        on_turn: Callable[[], None] | None,
    ):
        self.session, self.kind, self.params = session, kind, params
        self.frames: list[Frame] = []
        self.trace: list[TraceStep] = []
        self._start = len(session.turns)
        self._progress, self._on_turn = progress, on_turn
        self._steps = params.num_timesteps - 1  # denoising steps per frame
        self._total = planned_frames * self._steps  # an upper bound for edit and agent

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.session.rewind(len(self.session.turns) - self._start)

    def text(self, text: str, kind: str = "instruction") -> None:
        self.session.add_text(text)
        self._log(kind)
        self._finished()

    def reference(self, image: Image.Image) -> None:
        self.session.add_image(image, seed=self.params.seed)
        self._log("reference")
        self._finished()

    def image(self, label: str) -> None:
        self.session.generate_image(self._frame_params(), self._denoise_progress())
        self._log("image")
        self._frame(label)
        self._finished()

    def forced_frames(self, frames: int, window: int, schedule: str) -> None:
        first = len(self.session.turns)
        params = self._frame_params()
        self.session.predict_frames(frames, params, window, schedule, self._progress)
        for index in range(first, len(self.session.turns)):
            turn = self.session.turns[index]
            self._log_turn(index, "image" if turn.kind == "image" else turn.kind)
            if turn.forcing is not None:
                self._frame(f"t+{turn.forcing.index + 1}", index)
        self._finished()

    def think_image(self, prompt: str, label: str) -> None:
        self.session.think_then_generate(prompt, self._frame_params(), self._denoise_progress())
        self._log("system", "instruction", "thinking", "image")
        self._frame(label)
        self._finished()

    def caption(self, question: str) -> None:
        reply = self.session.ask(question, self.params, self._hold_progress())
        self._log("question", "caption")
        self.frames[-1] = replace(self.frames[-1], caption=reply)
        self._finished()

    def choose(self, question: str, options: list[str], kind: str) -> str:
        answer, _ = self.session.choose(question, options)
        self._log("question", kind)
        self._finished()
        return answer

    def result(self, stopped: str) -> ChainResult:
        return ChainResult(self.kind, self.frames, self.trace, stopped)

    def _finished(self) -> None:
        """A step's turns are in the session: tell `on_turn` (e.g. to save it)."""
        if self._on_turn is not None:
            self._on_turn()

    def _frame_params(self) -> GenerationParams:
        """Frame k (from 0) of a chain samples with seed params.seed + k."""
        return replace(self.params, seed=self.params.seed + len(self.frames))

    def _frame(self, label: str, turn: int | None = None) -> None:
        turn = len(self.session.turns) - 1 if turn is None else turn
        self.frames.append(Frame(self.session.turns[turn].image, None, turn, label))

    def _log(self, *kinds: str) -> None:
        """Name the last len(kinds) turns of the session, in order."""
        first = len(self.session.turns) - len(kinds)
        for index, kind in enumerate(kinds, first):
            self._log_turn(index, kind)

    def _log_turn(self, index: int, kind: str) -> None:
        turn = self.session.turns[index]
        scores = dict(zip(turn.options, turn.scores, strict=True)) if turn.options else None
        self.trace.append(TraceStep(turn.role, kind, turn.text, turn.image, index, scores))

    def _hold_progress(self) -> ProgressFn | None:
        """For decoding: reports the steps done so far (a cancel is checked per token)."""
        if self._progress is None:
            return None
        done, total, report = len(self.frames) * self._steps, self._total, self._progress
        return lambda _i, _n: report(done, total)

    def _denoise_progress(self) -> ProgressFn | None:
        if self._progress is None:
            return None
        done, total, report = len(self.frames) * self._steps, self._total, self._progress
        return lambda i, _n: report(done + i, total)


# -- validation ---------------------------------------------------------------------------


def instructions_for(templates: dict[str, str] | None) -> dict[str, str]:
    """Each action's instruction: DEFAULT_TEMPLATES overridden by `templates`."""
    if templates is None:
        return dict(DEFAULT_TEMPLATES)
    if not isinstance(templates, dict):
        raise InputError(f"templates must be a dict action -> text, got {templates!r}")
    for action, text in templates.items():
        if action not in ACTIONS:
            raise InputError(
                f"templates: unknown action {action!r}; the actions are {', '.join(ACTIONS)}"
            )
        check_field_text(f"templates[{action!r}]", text)
    return {**DEFAULT_TEMPLATES, **templates}


def _beat(session: Session, index: int, beat: object) -> Beat:
    """A checked beat; its reference image opened and resized here, before any turn."""
    if isinstance(beat, str):
        beat = Beat(beat)
    if not isinstance(beat, Beat):
        raise InputError(f"beats[{index}] must be a str or a Beat, got {type(beat).__name__}")
    check_field_text(f"beats[{index}].text", beat.text)
    if beat.image is None:
        return beat
    try:
        if isinstance(beat.image, str | Path):  # the same rule as Session.add_image
            check_regular_file(Path(beat.image))
        return Beat(beat.text, session.pipe.prepare_image(beat.image))
    except BagelError as err:
        raise type(err)(f"beats[{index}].image: {err}") from err

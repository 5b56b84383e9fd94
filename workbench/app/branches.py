"""What a browser session holds: branches (a Session plus its steps) per page.

A step is one thing the user sees as a unit on a strip: a story beat (its reference
image, its text, the frame, the model's caption), a world move (instruction, frame), an
edit round (thinking, frame, judgement). Undo drops the last step; regenerating a beat
forks the branch before that beat. Steps are read off the session's turns, so a loaded
session has them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from bagel.pipeline import BagelPipeline
from bagel.tokenizer import GEN_THINK_PROMPT
from workbench.metrics import FrameMetrics
from workbench.session import Session
from workbench.transcript import Turn

PAGES = ("story", "world")


@dataclass(frozen=True)
class Shot:
    """A frame on a strip."""

    image: Image.Image
    label: str
    turn: int  # its image turn in the session
    caption: str | None = None  # the model's caption of it (story with captions)
    thought: str | None = None  # the model's thinking before it (edit with thinking)


@dataclass(frozen=True)
class Step:
    start: int  # turns in the session before the step: undo rewinds to it
    shots: tuple[Shot, ...]
    text: str | None  # the user's text the frame was made from (beat, instruction)
    reference: Image.Image | None = None  # a story beat's reference image


def steps_from_turns(
    turns: list[Turn], start: int, page: str, labels: dict[int, str] | None = None
) -> list[Step]:
    """Group turns[start:] into steps.

    A step ends with its frame: any image on the world page, a model image on the story
    page (a user image there is the next beat's reference). A question and the model's
    answer right after a frame (a caption, a judgement) belong to that frame's step.
    labels: frame label by turn index (the chains' labels); otherwise the step's text.
    """
    groups: list[list[int]] = []
    closed = True  # the last group has its frame
    i = start
    while i < len(turns):
        if closed and groups and _is_follow_up(turns, i):
            groups[-1] += [i, i + 1]
            i += 2
            continue
        if closed:
            groups.append([])
            closed = False
        groups[-1].append(i)
        turn = turns[i]
        closed = turn.kind == "image" and (page == "world" or turn.role == "model")
        i += 1
    return [_step(turns, group, page, labels or {}) for group in groups]


def _is_follow_up(turns: list[Turn], i: int) -> bool:
    return (
        i + 1 < len(turns)
        and (turns[i].role, turns[i].kind) == ("user", "text")
        and turns[i + 1].role == "model"
        and turns[i + 1].kind in ("text", "choice")
    )


def _step(turns: list[Turn], group: list[int], page: str, labels: dict[int, str]) -> Step:
    images = [i for i in group if turns[i].kind == "image"]
    closing = [i for i in images if page == "world" or turns[i].role == "model"]
    frame = closing[-1] if closing else None
    texts = [
        turns[i].text
        for i in group
        if (turns[i].role, turns[i].kind) == ("user", "text")
        and turns[i].text != GEN_THINK_PROMPT
        and (frame is None or i < frame)
    ]
    text = texts[-1] if texts else None
    shots: tuple[Shot, ...] = ()
    if frame is not None:
        after = [turns[i] for i in group if i > frame and turns[i].role == "model"]
        thoughts = [turns[i].text for i in group if turns[i].kind == "thinking"]
        label = labels.get(frame) or text or ("input image" if turns[frame].role == "user" else "")
        caption = next((t.text for t in after if t.kind == "text"), None)
        shots = (
            Shot(turns[frame].image, label, frame, caption, thoughts[-1] if thoughts else None),
        )
    reference = next(
        (turns[i].image for i in images if i != frame and turns[i].role == "user"), None
    )
    return Step(group[0], shots, text, reference)


@dataclass
class Branch:
    name: str
    page: str
    session: Session
    steps: list[Step] = field(default_factory=list)
    metrics: list[FrameMetrics] = field(default_factory=list)  # per shot, when computed
    revision: int = 0  # bumped on every change (downloads are keyed by it)
    truth_seed: int | None = None  # world models: the rendered view its first frame is
    model: str = ""  # the model it runs on, as loaded ("": the tiny default)

    @property
    def shots(self) -> list[Shot]:
        return [shot for step in self.steps for shot in step.shots]

    def update(
        self, session: Session, steps: list[Step], metrics: list[FrameMetrics] | None = None
    ) -> None:
        self.session, self.steps = session, steps
        self.metrics = metrics if metrics is not None else self.metrics[: len(self.shots)]
        self.revision += 1

    def undo(self) -> Step | None:
        """Drop the last step (its turns are rewound); None when there is none."""
        if not self.steps:
            return None
        step = self.steps[-1]
        self.session.rewind(len(self.session.turns) - step.start)
        # earlier frames' metrics do not depend on later frames
        self.update(self.session, self.steps[:-1])
        return step


@dataclass
class Workspace:
    """One browser session's branches, of any page and any model: each branch's session
    runs on its own model (`Branch.model` names it, `session.pipe` is it)."""

    branches: dict[str, Branch] = field(default_factory=dict)
    current: dict[str, str] = field(default_factory=dict)  # page -> branch name

    def branch(self, page: str, pipe: BagelPipeline, model: str = "") -> Branch:
        """The page's current branch; an empty one on `pipe` when there is none (or the
        current one is empty and on another model)."""
        name = self.current.get(page)
        found = self.branches.get(name) if name is not None else None
        if found is None or (not found.session.turns and found.session.pipe is not pipe):
            return self.new(page, pipe, model)
        return found

    def of_page(self, page: str) -> list[Branch]:
        return [b for b in self.branches.values() if b.page == page]

    def add(
        self,
        page: str,
        session: Session,
        steps: list[Step] | None = None,
        metrics: list[FrameMetrics] | None = None,
        name: str | None = None,
        model: str = "",
    ) -> Branch:
        """A new branch on `model`, named `name` if given and free, else `{page}-{n}`,
        which becomes current; it takes the place of the page's empty branches."""
        if page not in PAGES:
            raise ValueError(f"page must be one of {PAGES}, got {page!r}")
        for empty in [b.name for b in self.of_page(page) if not b.session.turns]:
            del self.branches[empty]
        if name is None or name in self.branches:
            n = 1
            while f"{page}-{n}" in self.branches:
                n += 1
            name = f"{page}-{n}"
        branch = Branch(name, page, session, list(steps or []), list(metrics or []))
        branch.model = model
        self.branches[branch.name] = branch
        self.current[page] = branch.name
        return branch

    def new(self, page: str, pipe: BagelPipeline, model: str = "") -> Branch:
        """An empty branch on the page (a new story or world) on `pipe`, made current."""
        return self.add(page, Session(pipe), model=model)

    def fork(self, branch: Branch) -> Branch:
        """A new branch sharing `branch`'s past (no KV copied), on its model."""
        fork = self.add(
            branch.page, branch.session.fork(), branch.steps, branch.metrics, model=branch.model
        )
        fork.truth_seed = branch.truth_seed
        return fork

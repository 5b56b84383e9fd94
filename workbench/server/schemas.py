"""Request and response bodies of the HTTP API (pydantic; the same models give /docs).

Every request model forbids unknown fields and takes JSON types strictly (no "5" for 5),
so a typo or a wrong type is a 422 naming the field instead of a silent default. The
generation settings are the scenario file's model (ranges declared there); the other
value checks stay where they live for every caller: `GenerationParams`, `ContextLimit`
and the chain functions.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bagel.errors import InputError
from workbench.params import ContextLimit, GenerationParams
from workbench.scenario import schema as scenario_schema


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# -- requests -----------------------------------------------------------------------------


class Params(scenario_schema.Params):
    """Generation settings; a field left out keeps its default (GenerationParams). The
    model of a scenario step's `params:` (workbench/scenario/schema.py): the same types,
    ranges and messages."""

    def build(self, base: GenerationParams | None = None) -> GenerationParams:
        """The GenerationParams these settings make over `base`; InputError if invalid."""
        return self.apply(base or GenerationParams())


class Limit(Body):
    """A context limit (docs/context-limits.md)."""

    max_tokens: int | None = None
    policy: Literal["refuse", "drop_vit", "keep_last_images"] = "refuse"
    keep_images: int | None = None

    def build(self) -> ContextLimit:
        return ContextLimit(self.max_tokens, self.policy, self.keep_images)


class NewSession(Body):
    limit: Limit | None = None


class Text(Body):
    text: str


class Generate(Body):
    params: Params | None = None


class Ask(Body):
    question: str
    params: Params | None = None


class Choose(Body):
    question: str
    options: list[str]


class Think(Body):
    prompt: str
    params: Params | None = None


class PredictFrames(Body):
    frames: int
    params: Params | None = None
    window: int = 1
    schedule: str = "autoregressive"


class Rewind(Body):
    n: int = 1


class Navigate(Body):
    actions: list[str]
    params: Params | None = None
    templates: dict[str, str] | None = None


class Rotate(Body):
    degrees: float
    steps: int
    axis: str = "vertical"
    params: Params | None = None
    template: str | None = None


class Predict(Body):
    frames: int
    params: Params | None = None
    mode: str = "autoregressive"
    window: int = 1
    schedule: str = "autoregressive"
    instruction: str | None = None


class Story(Body):
    beats: list[str] = Field(description="beat texts (reference images: add them as turns)")
    params: Params | None = None
    caption: bool = False


class Edit(Body):
    instruction: str
    params: Params | None = None
    think: bool = False
    max_rounds: int = 1


class Agent(Body):
    goal: str
    actions: list[str] | None = None
    params: Params | None = None
    max_steps: int = 8
    templates: dict[str, str] | None = None


class Export(Body):
    formats: list[str] | None = Field(None, description="png, gif, mp4, sheet, story, session")
    fps: float = 4.0
    include: Literal["generated", "all"] = "generated"


# -- responses ----------------------------------------------------------------------------


class TurnOut(BaseModel):
    index: int
    role: str
    kind: str
    text: str | None = None
    image: str | None = Field(None, description="URL of the image (PNG)")
    params: dict[str, Any] | None = None
    seed: int = 0
    seconds: float = 0.0
    options: list[str] | None = None
    scores: list[float] | None = None
    forcing: dict[str, Any] | None = None


class SessionOut(BaseModel):
    id: str
    turns: int


class Transcript(BaseModel):
    id: str
    turns: list[TurnOut]


class TurnResult(BaseModel):
    """What a verb did: the turns it appended and its answer."""

    job: str
    session: str
    turns: list[TurnOut]
    text: str | None = None  # ask: the reply; think: the thinking; choose: the answer
    scores: list[float] | None = None  # choose: every option's log-probability
    stopped: str | None = None  # a chain: why it stopped
    new_session: str | None = None  # fork: the new branch's id
    report: dict[str, Any] | None = None  # replay: per-frame differences
    queued_seconds: float
    run_seconds: float


class JobOut(BaseModel):
    id: str
    title: str
    session: str | None
    state: Literal["queued", "running", "done", "cancelled", "failed"]
    position: int | None = Field(None, description="jobs ahead of this one, while queued")
    steps_done: int
    steps_total: int
    error: str | None = None
    result: TurnResult | None = None


class Queue(BaseModel):
    busy: bool  # a job holds the model
    waiting: int  # jobs in line behind it


class Health(BaseModel):
    checkpoint: str | None
    device: str
    dtype: str
    sessions: int
    queue: Queue


def check(build, field: str):
    """Run a build() that may raise InputError; re-raise it naming the request field."""
    try:
        return build()
    except InputError as err:
        raise FieldError(field, str(err)) from err


class FieldError(InputError):
    """A request field whose value the workbench refuses (a 422 naming the field)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem

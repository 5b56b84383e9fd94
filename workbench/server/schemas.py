"""Request and response bodies of the HTTP API (pydantic; the same models give /docs).

Every request model forbids unknown fields and takes JSON types strictly (no "5" for 5)
and numbers finite (no NaN, Infinity or 1e400), so a typo or a wrong type is a 422
naming the field instead of a silent default. The generation settings are the scenario
file's model (ranges declared there); the other value checks stay where they live for
every caller: `GenerationParams`, `ContextLimit` and the chain functions.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from bagel.errors import InputError
from bagel.tokenizer import check_text
from workbench.params import MAX_TEXT_CHARS, ContextLimit, GenerationParams
from workbench.scenario import schema as scenario_schema

# a user text: bounded and valid Unicode (no lone surrogate, which JSON can escape), checked
# here before anything reads it (the same rules as Session's)
UserText = Annotated[str, Field(max_length=MAX_TEXT_CHARS), AfterValidator(check_text)]
MAX_OPTIONS = 256  # the options of one choice (each is scored by the model)
# a name picked from a short list (an action, axis, schedule, format, ...)
Name = Annotated[str, Field(max_length=64)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


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
    text: UserText


class Generate(Body):
    params: Params | None = None


class Ask(Body):
    question: UserText
    params: Params | None = None


class Choose(Body):
    question: UserText
    options: Annotated[list[UserText], Field(max_length=MAX_OPTIONS)]


class Think(Body):
    prompt: UserText
    params: Params | None = None


class PredictFrames(Body):
    frames: int
    params: Params | None = None
    window: int = 1
    schedule: Name = "autoregressive"


class Rewind(Body):
    n: int = 1


class Navigate(Body):
    actions: list[Name]
    params: Params | None = None
    templates: dict[Name, UserText] | None = None


class Rotate(Body):
    degrees: float
    steps: int
    axis: Name = "vertical"
    params: Params | None = None
    template: UserText | None = None


class Predict(Body):
    frames: int
    params: Params | None = None
    mode: Name = "autoregressive"
    window: int = 1
    schedule: Name = "autoregressive"
    instruction: UserText | None = None


class Story(Body):
    beats: list[UserText] = Field(description="beat texts (reference images: add them as turns)")
    params: Params | None = None
    caption: bool = False


class Edit(Body):
    instruction: UserText
    params: Params | None = None
    think: bool = False
    max_rounds: int = 1


class Agent(Body):
    goal: UserText
    actions: list[Name] | None = None
    params: Params | None = None
    max_steps: int = 8
    templates: dict[Name, UserText] | None = None


class Export(Body):
    formats: list[Name] | None = Field(None, description="png, gif, mp4, sheet, story, session")
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

"""The scenario file's schema: one pydantic model per mapping a scenario file holds
(docs/scenarios.md). workbench/scenario/read.py parses the YAML, validates it with
ScenarioFile and turns the first error into `file:line: field: problem`; `workbench
schema scenario` prints ScenarioFile.model_json_schema(), which editors use to check and
complete a file.

Every model takes values strictly (no "5" for 5, no 1 for true) and refuses unknown keys,
suggesting the closest known one; the value types are workbench/scenario/values.py. A
step is a tagged union on its chain's name. The accepted actions, axes, modes, schedules,
templates and export formats are those of workbench.chains and workbench.export, so a
file and the code that runs it cannot disagree.
"""

import inspect
from dataclasses import replace
from typing import Annotated, Any, ClassVar, Union

import torch
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidatorFunctionWrapHandler,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails

from bagel.checkpoint import DTYPES
from bagel.errors import InputError
from bagel.flow import MAX_TIMESTEPS, RENORM_TYPES
from bagel.forcing import check_forcing
from bagel.profiles import PROFILES
from bagel.taylorseer import FEATURE_CACHES
from workbench import chains
from workbench.chains import checks as chain_checks
from workbench.export import FORMATS
from workbench.media import FPS_RANGE, GIF_MAX_FPS
from workbench.params import MAX_SEED, MAX_SIDE, MAX_THINK_TOKENS, GenerationParams
from workbench.scenario.values import (
    Prompt,
    Text,
    choice,
    distinct,
    integer,
    number,
    problem,
    suggest,
    what,
)

CHAINS = ("navigate", "rotate", "predict", "story", "edit", "agent")
MAX_COUNT = 256  # frames, steps, rounds, actions or beats in one step; steps in a file


def _degrees(value: float) -> float:
    if value == 0 or abs(value) > 360:
        raise problem(f"must be non-zero and between -360 and 360, got {value:g}")
    return value


def _template(value: str) -> str:
    """rotate's instruction, checked as the chain checks it, then filled as it fills it
    (a format such as {degrees:d} fails on the text the chain puts in)."""
    try:
        chain_checks.check_template(value, "the template")
    except InputError as err:
        raise problem(str(err)) from None
    try:
        value.format(degrees="90", axis="vertical")
    except (ValueError, IndexError, KeyError) as err:
        raise problem(f"not a valid template ({err})") from None
    return value


def _device(value: str) -> str:
    """The form only ("cpu", "cuda", "cuda:1", "auto"); availability is checked at load."""
    try:
        ok = value == "auto" or torch.device(value).type in ("cpu", "cuda")
    except (RuntimeError, TypeError):
        ok = False
    if not ok:
        raise problem(f"unknown device {value!r}; expected cpu, cuda, cuda:N or auto")
    return value


Count = integer(1, MAX_COUNT)
Action = choice(tuple(chains.ACTIONS), "action")
Actions = Annotated[list[Action], Field(min_length=1, max_length=MAX_COUNT)]


# -- mappings -----------------------------------------------------------------------------


class Strict(BaseModel):
    """A mapping of known keys, each value of its exact type."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    hints: ClassVar[dict[str, str]] = {}  # key -> why it is refused here, said instead

    @model_validator(mode="wrap")
    @classmethod
    def known_keys(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """pydantic's errors, an unknown key's said with the closest known one."""
        try:
            return handler(data)
        except ValidationError as err:
            raise ValidationError.from_exception_data(
                err.title, [cls._said(error) for error in err.errors()]
            ) from None

    @classmethod
    def _said(cls, error: ErrorDetails) -> InitErrorDetails:
        kind, loc, ctx = error["type"], error["loc"], error.get("ctx", {})
        if kind == "extra_forbidden" and len(loc) == 1:  # a key of this mapping
            known = tuple(cls.model_fields)
            words = cls.hints.get(str(loc[0])) or f"unknown key; {suggest(loc[0], known)}"
            kind = problem(words)
        elif kind == "scenario":  # said already, further in; rebuilt as pydantic needs
            kind = problem(ctx["message"], *ctx["at"])
        return {"type": kind, "loc": loc, "input": error["input"], "ctx": ctx}


_DEFAULT = GenerationParams()


class Sampling(Strict):
    """Generation settings (workbench.params.GenerationParams); a key left out keeps its
    value from the scenario's `defaults`, else GenerationParams' default."""

    num_timesteps: integer(2, MAX_TIMESTEPS) = _DEFAULT.num_timesteps
    timestep_shift: number(above=0) = _DEFAULT.timestep_shift
    cfg_text_scale: number(low=0) = _DEFAULT.cfg_text_scale
    cfg_img_scale: number(low=0) = _DEFAULT.cfg_img_scale
    cfg_interval: Annotated[list[number(0, 1)], Field(min_length=2, max_length=2)] = list(
        _DEFAULT.cfg_interval
    )
    cfg_renorm_type: choice(RENORM_TYPES) = _DEFAULT.cfg_renorm_type
    cfg_renorm_min: number(0, 1) = _DEFAULT.cfg_renorm_min
    feature_cache: choice(FEATURE_CACHES) = _DEFAULT.feature_cache
    feature_cache_interval: integer(1) = _DEFAULT.feature_cache_interval
    height: integer(1, MAX_SIDE) | None = None
    width: integer(1, MAX_SIDE) | None = None
    max_think_tokens: integer(1, MAX_THINK_TOKENS) = _DEFAULT.max_think_tokens
    do_sample: bool = _DEFAULT.do_sample
    temperature: number() = _DEFAULT.temperature

    def apply(self, base: GenerationParams) -> GenerationParams:
        """`base` with the keys this mapping gives; GenerationParams' own checks run (the
        ones across fields), raising InputError."""
        given = self.model_dump(exclude_unset=True)
        if "cfg_interval" in given:
            given["cfg_interval"] = tuple(given["cfg_interval"])
        return replace(base, **given)


class Defaults(Sampling):
    """Generation settings for the start and every step."""

    hints: ClassVar[dict[str, str]] = {"seed": "set the seed with the top-level `seed:`"}


class Params(Sampling):
    """Generation settings for this step only, over the scenario's `defaults`."""

    seed: integer(0, MAX_SEED) = Field(0, description="default: the top-level `seed`")


Templates = create_model(
    "Templates",
    __doc__="The instruction said for an action, in place of its default.",
    __base__=Strict,
    **{action: (Text, None) for action in chains.ACTIONS},
)


def _default(chain: str, key: str) -> Any:
    """The chain function's own default for a key (a file leaving the key out gets it)."""
    value = inspect.signature(getattr(chains, chain)).parameters[key].default
    return list(value) if isinstance(value, tuple) else value


class NavigateArgs(Strict):
    """Per action: its instruction, then the next frame."""

    actions: Actions
    templates: Templates = None
    params: Params = None


class RotateArgs(Strict):
    """`steps` times: the rotation instruction, then a frame."""

    degrees: Annotated[number(-360, 360), AfterValidator(_degrees)]
    steps: Count
    axis: choice(chains.AXES) = _default("rotate", "axis")
    template: Annotated[Text, AfterValidator(_template)] = None
    params: Params = None


class PredictArgs(Strict):
    """The next frames, one at a time or by diffusion forcing."""

    frames: Count
    mode: choice(chains.PREDICT_MODES) = _default("predict", "mode")
    window: Count = _default("predict", "window")
    schedule: choice(chains.SCHEDULES) = _default("predict", "schedule")
    instruction: Text = None
    params: Params = None

    @model_validator(mode="after")
    def forcing_keys(self) -> "PredictArgs":
        """window and schedule belong to diffusion forcing; a window fits in the frames."""
        if self.mode == "autoregressive":
            for key, plain in (("window", 1), ("schedule", "autoregressive")):
                if getattr(self, key) != plain:
                    raise problem(f"must be {plain!r} unless mode is forcing", key)
        if self.window > self.frames:
            raise problem(f"must be <= frames ({self.frames})", "window")
        try:  # the sampler's own check
            check_forcing(self.schedule, self.window, self.frames)
        except InputError as err:
            key = "schedule" if "schedule" in self.model_fields_set else "mode"
            raise problem(str(err), key) from None
        return self


class Beat(Strict):
    """A beat that brings its own picture, added before its text."""

    text: Text
    image: Text = None


BeatEntry = Annotated[
    Union[Annotated[Text, Tag("beat text")], Annotated[Beat, Tag("beat mapping")]],  # noqa: UP007
    Discriminator(lambda value: "beat text" if isinstance(value, str) else "beat mapping"),
]


class StoryArgs(Strict):
    """Per beat: its picture (if any), its text, a frame, and optionally a caption."""

    beats: Annotated[list[BeatEntry], Field(min_length=1, max_length=MAX_COUNT)]
    caption: bool = _default("story", "caption")
    params: Params = None

    @field_validator("beats", mode="before")
    @classmethod
    def beat_shapes(cls, beats: Any) -> Any:
        for i, beat in enumerate(beats if isinstance(beats, list) else ()):
            if not isinstance(beat, str | dict):
                raise problem(f"expected text or {{text, image}}, got {what(beat)}", i)
        return beats


class EditArgs(Strict):
    """Edit the last image; optionally plan in words first, look and edit again."""

    instruction: Text
    think: bool = _default("edit", "think")
    max_rounds: Count = _default("edit", "max_rounds")
    params: Params = None


class AgentArgs(Strict):
    """Choose actions toward a goal, one frame each, until done or max_steps."""

    goal: Text
    actions: Annotated[
        Actions, AfterValidator(distinct), Field(json_schema_extra={"uniqueItems": True})
    ] = _default("agent", "actions")
    max_steps: Count = _default("agent", "max_steps")
    templates: Templates = None
    params: Params = None


CHAIN_MODELS: dict[str, type[Strict]] = {
    "navigate": NavigateArgs,
    "rotate": RotateArgs,
    "predict": PredictArgs,
    "story": StoryArgs,
    "edit": EditArgs,
    "agent": AgentArgs,
}
CHAIN_ARGS = {
    chain: tuple(k for k in model.model_fields if k != "params")
    for chain, model in CHAIN_MODELS.items()
}


class ChainStep(Strict):
    """One step: a mapping with one key, the chain, whose value holds its arguments."""

    @property
    def chain(self) -> str:
        return next(iter(type(self).model_fields))

    @property
    def args(self) -> Strict:
        return getattr(self, self.chain)


STEP_TAGS = {chain: f"{chain} step" for chain in CHAINS}
TAGS = frozenset([*STEP_TAGS.values(), "beat text", "beat mapping"])  # not keys of the file
STEP_MODELS = {
    chain: create_model(f"{chain.title()}Step", __base__=ChainStep, **{chain: (model, ...)})
    for chain, model in CHAIN_MODELS.items()
}
StepEntry = Annotated[
    Union[tuple(Annotated[model, Tag(STEP_TAGS[c])] for c, model in STEP_MODELS.items())],  # noqa: UP007
    Discriminator(lambda value: STEP_TAGS.get(next(iter(value), None))),
]


class StartKeys(Strict):
    """The first turn: an input image, or a prompt to generate the first image from."""

    image: Text = None
    prompt: Prompt = None

    @model_validator(mode="after")
    def one_of(self) -> "StartKeys":
        if len(self.model_fields_set) != 1:
            raise problem("give exactly one of `image` or `prompt`")
        return self


class ExportKeys(Strict):
    """What to write after the run (workbench.export.export_session)."""

    formats: Annotated[
        list[choice(tuple(sorted(FORMATS)))],
        Field(max_length=len(FORMATS), json_schema_extra={"uniqueItems": True}),
        AfterValidator(distinct),
    ] = ["png"]
    fps: number(*FPS_RANGE) = 4.0

    @model_validator(mode="after")
    def gif_fps(self) -> "ExportKeys":
        low, high = FPS_RANGE[0], GIF_MAX_FPS
        if "gif" in self.formats and self.fps > high:
            message = f"must be between {low:g} and {high:g} (a GIF's limit), got {self.fps:g}"
            raise problem(message, "fps")
        return self


class ScenarioFile(Strict):
    """A BAGEL Workbench scenario: a model, a seed, generation defaults, a start, chain
    steps and what to export (docs/scenarios.md)."""

    model_config = ConfigDict(
        title="BAGEL Workbench scenario",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    name: Text = None
    description: Text = None
    model: Text = None
    device: Annotated[Text, AfterValidator(_device)] = None
    dtype: choice(tuple(DTYPES)) = None
    profile: choice(PROFILES) = None
    seed: integer(0, MAX_SEED) = 0
    defaults: Defaults = None
    start: StartKeys = None
    steps: Annotated[list[StepEntry], Field(min_length=1, max_length=MAX_COUNT)]
    export: ExportKeys = None

    @field_validator("steps", mode="before")
    @classmethod
    def step_shapes(cls, steps: Any) -> Any:
        for i, step in enumerate(steps if isinstance(steps, list) else ()):
            if not isinstance(step, dict) or len(step) != 1:
                found = ", ".join(map(str, step)) if isinstance(step, dict) else what(step)
                message = f"a step is a mapping with one key, the chain ({', '.join(CHAINS)})"
                raise problem(f"{message}; found {found or 'an empty mapping'}", i)
            (chain,) = step
            if chain not in CHAINS:
                raise problem(f"unknown step {chain!r}; {suggest(chain, CHAINS)}", i)
        return steps

    @model_validator(mode="after")
    def first_step(self) -> "ScenarioFile":
        chain = self.steps[0].chain
        if self.start is None and chain != "story":
            raise problem(
                "needs an image to start from; add `start: {image: ...}` or "
                "`start: {prompt: ...}`, or begin with a story step",
                *("steps", 0, chain),
            )
        return self


TOP_KEYS = tuple(ScenarioFile.model_fields)

"""Scenario files: one YAML file per scenario, validated before anything runs.

A scenario gives the model options, a seed, generation defaults, a start (an image or a
prompt), a list of chain steps and export options (format: docs/scenarios.md; the
schema: workbench/scenario/schema.py). Every error names the file, the line and the field:

    street.yaml:14: steps[3].navigate.actions[1]: unknown action 'jump'; expected one of ...

The YAML is composed with its node marks, turned into plain values and a map from each
value's place to its line, and validated by the schema; pydantic's first error (the one
nearest the top of the file) is placed at the line of the value it names.

Paths resolve against the scenario file's folder and may not leave it unless the caller
passes `allow_outside` (never the file itself: a scenario from elsewhere must not be
able to read files outside its own folder). Running a loaded scenario is
workbench/scenario/run.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from bagel.errors import BagelError, InputError
from bagel.image import open_image
from workbench.files import check_regular_file
from workbench.params import GenerationParams
from workbench.scenario.schema import TAGS, ChainStep, Sampling, ScenarioFile
from workbench.scenario.values import what
from workbench.scenario.yaml_lines import Loc, Parsed, YamlError, parse

MAX_FILE_BYTES = 1024 * 1024


class ScenarioError(InputError):
    """A scenario file (or its output folder) is wrong: `{file}:{line}: {field}: {problem}`.

    Control characters (a raw ESC from a key, say) are shown escaped, as Python's repr
    writes them, so a message cannot drive the terminal it is printed on."""

    def __init__(self, file: str | Path, line: int | None, field: str | None, problem: str):
        self.file, self.line, self.field, self.problem = str(file), line, field, problem
        where = self.file if line is None else f"{self.file}:{line}"
        text = f"{where}: {field}: {problem}" if field else f"{where}: {problem}"
        super().__init__(_escaped(text))


def _escaped(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass(frozen=True)
class Start:
    """The first turn: an input image, or a prompt to generate the first image from
    (a blank prompt: an unconditional image)."""

    image: Path | None = None
    prompt: str | None = None


@dataclass(frozen=True)
class StoryBeat:
    """One story beat as read from the file (the runner opens the image)."""

    text: str
    image: Path | None = None


@dataclass(frozen=True)
class Step:
    """One chain call: its name, the keyword arguments the file gave, its parameters
    (the scenario's defaults with this step's `params:` applied) and its line."""

    chain: str
    args: dict[str, Any]
    params: GenerationParams
    line: int


@dataclass(frozen=True)
class ExportOptions:
    formats: tuple[str, ...] = ("png",)
    fps: float = 4.0


@dataclass(frozen=True)
class Scenario:
    name: str
    source: Path  # the scenario file, resolved
    start: Start
    steps: tuple[Step, ...]
    defaults: GenerationParams = GenerationParams()
    export: ExportOptions = ExportOptions()
    model: str | None = None  # None: the caller's default
    device: str | None = None
    dtype: str | None = None
    profile: str | None = None  # a memory profile (bagel/profiles.py)
    seed: int = 0
    description: str = ""
    lines: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def error(self, field_path: str, problem: str) -> ScenarioError:
        """An error located at a field of this file (its line when the file has it)."""
        return ScenarioError(self.source, self.lines.get(field_path), field_path, problem)


def field_path(loc: Loc) -> str:
    """A place as error messages write it: `steps[0].navigate.actions[1]`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "document"


# -- pydantic's errors at their lines ---------------------------------------------------


def _first_error(err: ValidationError, file: str, parsed: Parsed) -> ScenarioError:
    """The error nearest the top of the file (a missing key last: it is often a misspelt
    one, reported as unknown), at the line of the value it names."""
    found = []
    for order, error in enumerate(err.errors(include_url=False)):
        context = error.get("ctx") or {}
        loc = tuple(p for p in error["loc"] if p not in TAGS) + tuple(context.get("at", ()))
        missing = error["type"] == "missing"  # a misspelt key is the unknown one
        if missing:
            loc, words = loc[:-1], f"missing required key {loc[-1]!r}"
        else:
            words = _words(error, parsed.texts.get(loc))
        line = parsed.line(loc)
        found.append((missing, line, order, ScenarioError(file, line, field_path(loc), words)))
    return min(found, key=lambda item: item[:3])[3]


def _words(error: dict, written: str | None) -> str:
    """What is wrong, in the words of someone writing the file."""
    kind, value, context = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "scenario":
        return context["message"]
    if kind == "finite_number":
        return f"must be a finite number, got {(written or str(value))[:40]}"
    if kind == "too_short" and not value:
        return "expected at least one entry, got an empty list"
    expected = {
        "int_type": "an integer",
        "float_type": "a number",
        "bool_type": "true or false",
        "string_type": "text",
        "list_type": "a list",
        "model_type": "a mapping",
        "model_attributes_type": "a mapping",
        "dict_type": "a mapping",
    }
    if kind == "float_type" and isinstance(value, int):  # past what a float holds
        return f"must be a finite number, got an integer of {len(str(abs(value)))} digits"
    if kind in expected:
        return f"expected {expected[kind]}, got {what(value)}"
    if kind == "too_short":
        return f"expected at least {context['min_length']} entries, got {context['actual_length']}"
    if kind == "too_long":
        return f"at most {context['max_length']} entries, got {context['actual_length']}"
    return error["msg"]


# -- loading --------------------------------------------------------------------------


def load_scenario(path: str | Path, allow_outside: bool = False) -> Scenario:
    """Read and validate a scenario file; nothing runs and no model is needed.

    Args:
        path: the YAML file. Relative paths inside it resolve against its folder.
        allow_outside: let image paths leave the scenario's folder (off: they may not).
    Raises:
        ScenarioError: `{file}:{line}: {field}: {problem}` for the first problem found.
            The file must be a regular file (no link, FIFO or device) of at most
            MAX_FILE_BYTES, UTF-8, nested at most MAX_DEPTH levels.
    """
    file = str(path)
    source = Path(path).resolve()
    try:
        if not Path(path).exists() and not Path(path).is_symlink():
            raise ScenarioError(file, None, None, "file not found")
        size = check_regular_file(Path(path))  # no FIFO, device or link
        if size > MAX_FILE_BYTES:
            raise ScenarioError(
                file,
                None,
                None,
                f"the scenario file is {_size(size)}; scenario files are limited to "
                f"{_size(MAX_FILE_BYTES)}",
            )
        data = source.read_bytes()
    except BagelError as err:
        raise ScenarioError(file, None, None, str(err).removeprefix(f"{file}: ")) from err
    except OSError as err:
        raise ScenarioError(file, None, None, f"cannot read file ({err})") from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ScenarioError(
            file, line, None, f"not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start})"
        ) from err
    try:
        parsed = parse(text)
    except YamlError as err:
        where = "yaml" if err.loc is None else field_path(err.loc)
        raise ScenarioError(file, err.line, where, err.problem) from err
    if parsed is None:
        raise ScenarioError(file, 1, "document", "the file is empty; expected a scenario mapping")
    try:
        checked = ScenarioFile.model_validate(parsed.data)
    except ValidationError as err:
        raise _first_error(err, file, parsed) from None
    return _Scenario(file, parsed, source, allow_outside).build(checked)


def _size(n: int) -> str:
    """A size in bytes as a person reads it: 52.4 MiB, 1 MiB, 1048577 bytes."""
    if n % 2**20 == 0:
        return f"{n // 2**20} MiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2 * 2**20 else f"{n} bytes"


class _Scenario:
    """The checked file as a Scenario: parameters merged, image paths resolved and opened;
    a problem found here is placed at its line like the schema's."""

    def __init__(self, file: str, parsed: Parsed, source: Path, allow_outside: bool):
        self.file, self.parsed, self.allow_outside = file, parsed, allow_outside
        self.source, self.folder = source, source.parent

    def fail(self, loc: Loc, problem: str) -> NoReturn:
        raise ScenarioError(self.file, self.parsed.line(loc), field_path(loc), problem)

    def build(self, checked: ScenarioFile) -> Scenario:
        defaults = GenerationParams(seed=checked.seed)
        if checked.defaults is not None:
            defaults = self.params(checked.defaults, defaults, ("defaults",))
        start = Start()
        if checked.start is not None and checked.start.image is not None:
            start = Start(image=self.image(checked.start.image, ("start", "image")))
        elif checked.start is not None:
            start = Start(prompt=checked.start.prompt)
        steps = tuple(self.step(entry, i, defaults) for i, entry in enumerate(checked.steps))
        export = ExportOptions()
        if checked.export is not None:
            export = ExportOptions(tuple(checked.export.formats), checked.export.fps)
        return Scenario(
            name=self.source.stem if checked.name is None else checked.name,
            source=self.source,
            start=start,
            steps=steps,
            defaults=defaults,
            export=export,
            model=None if checked.model is None else self.model(checked.model),
            device=checked.device,
            dtype=checked.dtype,
            profile=checked.profile,
            seed=checked.seed,
            description=checked.description or "",
            lines={field_path(loc): line for loc, line in self.parsed.lines.items() if loc},
        )

    def step(self, entry: ChainStep, index: int, defaults: GenerationParams) -> Step:
        chain, keys, loc = entry.chain, entry.args, ("steps", index, entry.chain)
        args = {
            name: getattr(keys, name)
            for name in type(keys).model_fields
            if name in keys.model_fields_set
        }
        params = args.pop("params", None)
        params = defaults if params is None else self.params(params, defaults, (*loc, "params"))
        if "templates" in args:
            args["templates"] = args["templates"].model_dump(exclude_unset=True)
        if "beats" in args:
            args["beats"] = [
                self.beat(beat, (*loc, "beats", i)) for i, beat in enumerate(args["beats"])
            ]
        if chain == "predict" and params.feature_cache != "none" and args.get("window", 1) != 1:
            self.fail(
                (*loc, "window"),
                f"must be 1 with feature_cache {params.feature_cache!r} (the sampler refuses it)",
            )
        return Step(chain, args, params, self.parsed.lines[loc])

    def beat(self, beat: Any, loc: Loc) -> StoryBeat:
        if isinstance(beat, str):
            return StoryBeat(beat)
        image = None if beat.image is None else self.image(beat.image, (*loc, "image"))
        return StoryBeat(beat.text, image)

    def params(self, keys: Sampling, base: GenerationParams, loc: Loc) -> GenerationParams:
        """`base` with the mapping's fields; GenerationParams' own error is placed at the
        field it names."""
        try:
            return keys.apply(base)
        except InputError as err:
            given = keys.model_fields_set
            key = next((w for w in re.findall(r"\w+", str(err)) if w in given), None)
            words = str(err)
            if key is None:
                self.fail(loc, words)
            if words.startswith(f"{key} must"):  # "num_timesteps must be ..."
                words = words.removeprefix(f"{key} ")
            self.fail((*loc, key), words)

    def image(self, name: str, loc: Loc) -> Path:
        """A path relative to the scenario's folder (or absolute), that opens as an image."""
        try:
            given = self.folder / Path(name).expanduser()
            path = given.resolve()
        except (OSError, RuntimeError, ValueError) as err:  # a NUL, an unknown ~user
            self.fail(loc, f"not a usable path ({err})")
        if not self.allow_outside and not path.is_relative_to(self.folder):
            self.fail(
                loc,
                f"{name!r} resolves to {path}, outside the scenario's folder {self.folder}; "
                "only the caller can allow that (load_scenario(..., allow_outside=True))",
            )
        try:
            if given.is_symlink() or given.exists():  # a missing one: open_image says so
                check_regular_file(given, None if self.allow_outside else self.folder)
            open_image(path, name=name)
        except BagelError as err:
            self.fail(loc, str(err))
        return path

    def model(self, name: str) -> str:
        """A checkpoint folder or hub id. A relative folder that exists next to the
        scenario is taken from there; it may lie outside its folder (checkpoints do)."""
        try:
            local = self.folder / Path(name).expanduser()
            return str(local.resolve()) if local.is_dir() else name
        except (OSError, RuntimeError, ValueError) as err:
            self.fail(("model",), f"not a usable path ({err})")

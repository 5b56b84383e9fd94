"""Scenario files: one YAML file per scenario, validated before anything runs.

A scenario gives the model options, a seed, generation defaults, a start (an image or a
prompt), a list of chain steps and export options (format: docs/scenarios.md). Every
error names the file, the line and the field:

    street.yaml:14: steps[3].navigate.actions[1]: unknown action 'jump'; expected one of ...

Paths resolve against the scenario file's folder and may not leave it unless the caller
passes `allow_outside` (never the file itself: a scenario from elsewhere must not be
able to read files outside its own folder). Running a loaded scenario is
workbench/scenario/run.py.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
import yaml

from bagel.checkpoint import DTYPES
from bagel.errors import BagelError, InputError
from bagel.forcing import check_forcing
from bagel.image import open_image
from bagel.profiles import PROFILES
from bagel.tokenizer import check_text
from workbench.files import check_regular_file
from workbench.params import GenerationParams

CHAINS = ("navigate", "rotate", "predict", "story", "edit", "agent")
MAX_COUNT = 256  # frames, steps, rounds or actions in one step
MAX_NODES = 100_000  # YAML values after alias expansion (guards against alias bombs)
MAX_DEPTH = 32  # nesting of YAML collections (a scenario needs 6), counted before composing
MAX_FILE_BYTES = 1024 * 1024
TOP_KEYS = (
    *("name", "description", "model", "device", "dtype", "profile", "seed"),
    *("defaults", "start", "steps", "export"),
)

# Each chain's keys: (required, reader). A reader is a _Reader method name; keys left
# out are not passed, so the chain's own default applies. "params" is common to all.
# The values they accept (actions, axes, modes, schedules) come from workbench.chains.
CHAIN_ARGS: dict[str, dict[str, tuple[bool, str]]] = {
    "navigate": {"actions": (True, "actions"), "templates": (False, "templates")},
    "rotate": {
        "degrees": (True, "degrees"),
        "steps": (True, "count"),
        "axis": (False, "axis"),
        "template": (False, "rotate_template"),
    },
    "predict": {
        "frames": (True, "count"),
        "mode": (False, "mode"),
        "window": (False, "count"),
        "schedule": (False, "schedule"),
        "instruction": (False, "text"),
    },
    "story": {"beats": (True, "beats"), "caption": (False, "boolean")},
    "edit": {
        "instruction": (True, "text"),
        "think": (False, "boolean"),
        "max_rounds": (False, "count"),
    },
    "agent": {
        "goal": (True, "text"),
        "actions": (False, "choices"),
        "max_steps": (False, "count"),
        "templates": (False, "templates"),
    },
}


class ScenarioError(InputError):
    """A scenario file (or its output folder) is wrong: `{file}:{line}: {field}: {problem}`."""

    def __init__(self, file: str | Path, line: int | None, field: str | None, problem: str):
        self.file, self.line, self.field, self.problem = str(file), line, field, problem
        where = self.file if line is None else f"{self.file}:{line}"
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")


@dataclass(frozen=True)
class Start:
    """The first turn: an input image, or a prompt to generate the first image from."""

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


# -- YAML with line numbers -----------------------------------------------------------


@dataclass
class _Node:
    """A YAML value and the line it starts on (1-based)."""

    value: Any  # a scalar, list[_Node] or dict[str, _Node]
    line: int
    key_line: int = 0  # a mapping value: the line of its key


_SEQ_TAG, _MAP_TAG, _MERGE_TAG = (f"tag:yaml.org,2002:{t}" for t in ("seq", "map", "merge"))


class _Builder:
    """Turns composed YAML nodes into _Nodes; scalars go through the safe constructor."""

    def __init__(self, loader: yaml.SafeLoader, file: str):
        self.loader, self.file, self.count, self.active = loader, file, 0, set()

    def build(self, node: yaml.Node, path: str) -> _Node:
        line = node.start_mark.line + 1
        self.count += 1
        if self.count > MAX_NODES:
            raise ScenarioError(self.file, line, path or "document", "too many values (aliases?)")
        if id(node) in self.active:
            raise ScenarioError(self.file, line, path or "document", "an alias refers to itself")
        if isinstance(node, yaml.ScalarNode):
            return _Node(self.loader.construct_object(node), line)
        if node.tag not in (_SEQ_TAG, _MAP_TAG):  # e.g. !!python/object: never constructed
            raise ScenarioError(self.file, line, path or "document", f"unsupported tag {node.tag}")
        self.active.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            out = _Node([self.build(n, f"{path}[{i}]") for i, n in enumerate(node.value)], line)
        else:
            out = _Node(self._mapping(node, path), line)
        self.active.discard(id(node))
        return out

    def _mapping(self, node: yaml.MappingNode, path: str) -> dict[str, _Node]:
        items: dict[str, _Node] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                raise ScenarioError(
                    self.file, key_line, path or "document", "merge keys (<<) are not supported"
                )
            key = (
                self.build(key_node, path).value if isinstance(key_node, yaml.ScalarNode) else None
            )
            if not isinstance(key, str):
                raise ScenarioError(
                    self.file, key_line, path or "document", f"keys must be text, got {key!r}"
                )
            here = f"{path}.{key}" if path else key
            if key in items:  # PyYAML would silently keep the last one
                first = items[key].key_line
                raise ScenarioError(
                    self.file, key_line, here, f"duplicate key (first given on line {first})"
                )
            items[key] = self.build(value_node, here)
            items[key].key_line = key_line
        return items


def _check_depth(text: str, file: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH from the event stream (the parser keeps an
    explicit stack; composing and building recurse, so they run only after this)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1
                raise ScenarioError(file, line, "yaml", f"nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _parse(text: str, file: str) -> _Node | None:
    loader = yaml.SafeLoader(text)
    try:
        _check_depth(text, file)
        root = loader.get_single_node()
        return None if root is None else _Builder(loader, file).build(root, "")
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = "; ".join(p for p in (err.context, err.problem) if p)
        raise ScenarioError(file, mark.line + 1 if mark else None, "yaml", problem) from err
    except yaml.YAMLError as err:
        raise ScenarioError(file, None, "yaml", str(err)) from err
    finally:
        loader.dispose()


# -- validation -----------------------------------------------------------------------


def _what(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "null" if value is None else f"{value!r} ({type(value).__name__})"


def _suggest(word: str, known: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}expected one of {', '.join(known)}"


class _Reader:
    """Reads one scenario's nodes into checked values; the first problem raises."""

    def __init__(self, file: str, folder: Path, allow_outside: bool):
        self.file, self.folder, self.allow_outside = file, folder, allow_outside
        self.chains = _chains()
        self.known_actions: tuple[str, ...] = tuple(self.chains.ACTIONS)
        self.lines: dict[str, int] = {}

    def fail(self, line: int, at: str, problem: str) -> NoReturn:
        raise ScenarioError(self.file, line, at, problem)

    def mapping(
        self, node: _Node, at: str, known: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict[str, _Node]:
        if not isinstance(node.value, dict):
            self.fail(node.line, at, f"expected a mapping with keys from {', '.join(known)}")
        for key, child in node.value.items():
            self.lines[f"{at}.{key}" if at else key] = child.key_line
            if key not in known:
                self.fail(
                    child.key_line,
                    f"{at}.{key}" if at else key,
                    f"unknown key; {_suggest(key, known)}",
                )
        for key in required:
            if key not in node.value:
                self.fail(
                    node.key_line or node.line, at or "document", f"missing required key {key!r}"
                )
        return node.value

    def sequence(self, node: _Node, at: str) -> list[_Node]:
        if not isinstance(node.value, list):
            self.fail(node.line, at, f"expected a list, got {_what(node.value)}")
        if not node.value:
            self.fail(node.line, at, "expected at least one entry, got an empty list")
        if len(node.value) > MAX_COUNT:
            self.fail(node.line, at, f"at most {MAX_COUNT} entries, got {len(node.value)}")
        for i, child in enumerate(node.value):
            self.lines[f"{at}[{i}]"] = child.line
        return node.value

    def text(self, node: _Node, at: str) -> str:
        if not isinstance(node.value, str) or not node.value.strip():
            self.fail(node.line, at, f"expected non-empty text, got {_what(node.value)}")
        try:
            return check_text(node.value, "the text")
        except BagelError as err:
            self.fail(node.line, at, str(err))

    def boolean(self, node: _Node, at: str) -> bool:
        if not isinstance(node.value, bool):
            self.fail(node.line, at, f"expected true or false, got {_what(node.value)}")
        return node.value

    def integer(self, node: _Node, at: str, low: int, high: int = 2**63 - 1) -> int:
        value = node.value
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(node.line, at, f"expected an integer, got {_what(value)}")
        if not low <= value <= high:
            bound = f"between {low} and {high if high < 2**63 - 1 else '2**63-1'}"
            self.fail(node.line, at, f"must be {bound}, got {value}")
        return value

    def number(self, node: _Node, at: str) -> float:
        if not isinstance(node.value, int | float) or isinstance(node.value, bool):
            self.fail(node.line, at, f"expected a number, got {_what(node.value)}")
        if not math.isfinite(node.value):  # YAML's .inf / .nan: no knob or angle takes them
            self.fail(node.line, at, f"expected a finite number, got {node.value}")
        return float(node.value)

    def choice(self, node: _Node, at: str, choices: tuple[str, ...]) -> str:
        value = self.text(node, at)
        if value not in choices:
            self.fail(node.line, at, f"unknown value {value!r}; {_suggest(value, choices)}")
        return value

    # -- chain arguments (names used in CHAIN_ARGS) ------------------------------------

    def count(self, node: _Node, at: str) -> int:
        return self.integer(node, at, 1, MAX_COUNT)

    def axis(self, node: _Node, at: str) -> str:
        return self.choice(node, at, tuple(self.chains.AXES))

    def mode(self, node: _Node, at: str) -> str:
        return self.choice(node, at, tuple(self.chains.PREDICT_MODES))

    def schedule(self, node: _Node, at: str) -> str:
        return self.choice(node, at, tuple(self.chains.SCHEDULES))

    def rotate_template(self, node: _Node, at: str) -> str:
        """rotate's instruction: {degrees} required, {axis} optional, nothing else."""
        text = self.text(node, at)
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as err:
            self.fail(node.line, at, f"not a valid template ({err})")
        if "degrees" not in names or not names <= {"degrees", "axis"}:
            self.fail(node.line, at, "must contain {degrees} and may contain {axis}, nothing else")
        try:  # as the chain fills it: a format spec such as {degrees:d} fails on text
            text.format(degrees="90", axis="vertical")
        except (ValueError, IndexError, KeyError) as err:
            self.fail(node.line, at, f"not a valid template ({err})")
        return text

    def degrees(self, node: _Node, at: str) -> float:
        value = self.number(node, at)
        if value == 0 or abs(value) > 360:
            self.fail(node.line, at, f"must be non-zero and between -360 and 360, got {value:g}")
        return value

    def action(self, node: _Node, at: str) -> str:
        value = self.text(node, at)
        if value not in self.known_actions:
            self.fail(
                node.line, at, f"unknown action {value!r}; {_suggest(value, self.known_actions)}"
            )
        return value

    def actions(self, node: _Node, at: str) -> list[str]:
        return [self.action(n, f"{at}[{i}]") for i, n in enumerate(self.sequence(node, at))]

    def choices(self, node: _Node, at: str) -> list[str]:
        """The agent's actions: distinct (each is one option of its choice)."""
        names = self.actions(node, at)
        for i, name in enumerate(names):
            if name in names[:i]:
                self.fail(node.value[i].line, f"{at}[{i}]", f"{name!r} is listed twice")
        return names

    def templates(self, node: _Node, at: str) -> dict[str, str]:
        items = self.mapping(node, at, self.known_actions)
        return {key: self.text(child, f"{at}.{key}") for key, child in items.items()}

    def beats(self, node: _Node, at: str) -> list[StoryBeat]:
        out = []
        for i, child in enumerate(self.sequence(node, at)):
            here = f"{at}[{i}]"
            if isinstance(child.value, str):
                out.append(StoryBeat(self.text(child, here)))
                continue
            if not isinstance(child.value, dict):
                self.fail(
                    child.line, here, f"expected text or {{text, image}}, got {_what(child.value)}"
                )
            items = self.mapping(child, here, ("text", "image"), required=("text",))
            image = self.image(items["image"], f"{here}.image") if "image" in items else None
            out.append(StoryBeat(self.text(items["text"], f"{here}.text"), image))
        return out

    # -- files and parameters -------------------------------------------------------------

    def image(self, node: _Node, at: str) -> Path:
        """A path relative to the scenario's folder (or absolute), that opens as an image."""
        name = self.text(node, at)
        given = self.folder / Path(name).expanduser()
        path = given.resolve()
        if not self.allow_outside and not path.is_relative_to(self.folder):
            self.fail(
                node.line,
                at,
                f"{name!r} resolves to {path}, outside the scenario's folder {self.folder}; "
                "only the caller can allow that (load_scenario(..., allow_outside=True))",
            )
        try:
            if given.is_symlink() or given.exists():  # a missing one: open_image says so
                check_regular_file(given, None if self.allow_outside else self.folder)
            open_image(path, name=name)
        except BagelError as err:
            self.fail(node.line, at, str(err))
        return path

    def params(self, node: _Node, at: str, base: GenerationParams) -> GenerationParams:
        """`base` with the mapping's GenerationParams fields replaced; GenerationParams'
        own checks run, and their error is placed at the field it names."""
        kinds = {f.name: f.type for f in dataclasses.fields(GenerationParams)}
        items = self.mapping(node, at, tuple(kinds))
        values = {
            key: self._param(child, f"{at}.{key}", kinds[key]) for key, child in items.items()
        }
        try:
            return dataclasses.replace(base, **values)
        except InputError as err:
            key = next((w for w in re.findall(r"\w+", str(err)) if w in items), None)
            problem = str(err).removeprefix(f"{key} ") if key else str(err)
            if key is None:
                self.fail(node.key_line or node.line, at, problem)
            self.fail(items[key].line, f"{at}.{key}", problem)

    def _param(self, node: _Node, at: str, kind: str) -> Any:
        """One GenerationParams field by its annotation; ranges are checked by the class."""
        if kind == "int":
            return self.integer(node, at, 0 if at.endswith(".seed") else -(2**63))
        if kind == "float":
            return self.number(node, at)
        if kind == "bool":
            return self.boolean(node, at)
        if kind == "str":
            return self.text(node, at)
        if kind == "int | None":
            return None if node.value is None else self.integer(node, at, 1)
        if kind == "tuple[float, float]":
            items = node.value if isinstance(node.value, list) else None
            if items is None or len(items) != 2:
                self.fail(node.line, at, f"expected [low, high], got {_what(node.value)}")
            return tuple(self.number(n, f"{at}[{i}]") for i, n in enumerate(items))
        raise AssertionError(f"GenerationParams field {at} has an unhandled type {kind}")


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
        check_regular_file(Path(path), max_bytes=MAX_FILE_BYTES)  # no FIFO, device or link
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
    root = _parse(text, file)
    if root is None:
        raise ScenarioError(file, 1, "document", "the file is empty; expected a scenario mapping")
    reader = _Reader(file, source.parent, allow_outside)
    return _scenario(reader, root, source)


def _scenario(r: _Reader, root: _Node, source: Path) -> Scenario:
    if not isinstance(root.value, dict):
        r.fail(root.line, "document", f"expected a mapping of {', '.join(TOP_KEYS)}")
    top = r.mapping(root, "", TOP_KEYS, required=("steps",))
    seed_node = top.get("seed")
    seed = 0 if seed_node is None else r.integer(seed_node, "seed", 0)
    defaults = GenerationParams(seed=seed)
    if "defaults" in top:
        node = top["defaults"]
        if isinstance(node.value, dict) and "seed" in node.value:
            r.fail(
                node.value["seed"].key_line,
                "defaults.seed",
                "set the seed with the top-level `seed:`",
            )
        defaults = r.params(node, "defaults", defaults)
    start = _start(r, top["start"]) if "start" in top else Start()
    steps = tuple(
        _step(r, node, i, defaults) for i, node in enumerate(r.sequence(top["steps"], "steps"))
    )
    if start == Start() and steps[0].chain != "story":
        r.fail(
            steps[0].line,
            f"steps[0].{steps[0].chain}",
            "needs an image to start from; add "
            "`start: {image: ...}` or `start: {prompt: ...}`, or begin with a story step",
        )
    return Scenario(
        name=r.text(top["name"], "name") if "name" in top else source.stem,
        source=source,
        start=start,
        steps=steps,
        defaults=defaults,
        export=_export_options(r, top["export"]) if "export" in top else ExportOptions(),
        model=_model(r, top["model"], source.parent) if "model" in top else None,
        device=_device(r, top["device"]) if "device" in top else None,
        dtype=r.choice(top["dtype"], "dtype", tuple(DTYPES)) if "dtype" in top else None,
        profile=r.choice(top["profile"], "profile", PROFILES) if "profile" in top else None,
        seed=seed,
        description=r.text(top["description"], "description") if "description" in top else "",
        lines=r.lines,
    )


def _start(r: _Reader, node: _Node) -> Start:
    items = r.mapping(node, "start", ("image", "prompt"))
    if len(items) != 1:
        r.fail(node.key_line or node.line, "start", "give exactly one of `image` or `prompt`")
    if "image" in items:
        return Start(image=r.image(items["image"], "start.image"))
    return Start(prompt=r.text(items["prompt"], "start.prompt"))


def _step(r: _Reader, node: _Node, index: int, defaults: GenerationParams) -> Step:
    at = f"steps[{index}]"
    if not isinstance(node.value, dict) or len(node.value) != 1:
        found = ", ".join(node.value) if isinstance(node.value, dict) else _what(node.value)
        r.fail(
            node.line,
            at,
            f"a step is a mapping with one key, the chain ({', '.join(CHAINS)}); found {found}",
        )
    ((chain, body),) = node.value.items()
    if chain not in CHAINS:
        r.fail(body.key_line, at, f"unknown step {chain!r}; {_suggest(chain, CHAINS)}")
    at = f"{at}.{chain}"
    r.lines[at] = body.key_line
    spec = CHAIN_ARGS[chain]
    required = tuple(key for key, (needed, _) in spec.items() if needed)
    items = r.mapping(body, at, (*spec, "params"), required)
    args = {
        key: getattr(r, spec[key][1])(child, f"{at}.{key}")
        for key, child in items.items()
        if key != "params"
    }
    if chain == "predict":
        _check_predict(r, items, args, at)
    params = r.params(items["params"], f"{at}.params", defaults) if "params" in items else defaults
    if chain == "predict" and params.feature_cache != "none" and args.get("window", 1) != 1:
        r.fail(
            items["window"].line,
            f"{at}.window",
            f"must be 1 with feature_cache {params.feature_cache!r} (the sampler refuses it)",
        )
    return Step(chain, args, params, body.key_line)


def _check_predict(r: _Reader, items: dict[str, _Node], args: dict[str, Any], at: str) -> None:
    """window and schedule belong to diffusion forcing; a window fits in the frames."""
    if args.get("mode", "autoregressive") == "autoregressive":
        for key, plain in (("window", 1), ("schedule", "autoregressive")):
            if args.get(key, plain) != plain:
                r.fail(items[key].line, f"{at}.{key}", f"must be {plain!r} unless mode is forcing")
    if args.get("window", 1) > args["frames"]:
        r.fail(items["window"].line, f"{at}.window", f"must be <= frames ({args['frames']})")
    if args.get("mode") == "forcing":  # the sampler's own check, before anything runs
        try:
            check_forcing(
                args.get("schedule", "autoregressive"), args.get("window", 1), args["frames"]
            )
        except InputError as err:
            key = "schedule" if "schedule" in items else "mode"
            r.fail(items[key].line, f"{at}.{key}", str(err))


def _export_options(r: _Reader, node: _Node) -> ExportOptions:
    """Formats and fps as the exporter (workbench/export.py) accepts them."""
    export = _export_module()
    items = r.mapping(node, "export", ("formats", "fps"))
    formats, fps = ExportOptions.formats, ExportOptions.fps
    if "formats" in items:
        listed, known = items["formats"], tuple(sorted(export.FORMATS))
        entries = [] if listed.value == [] else r.sequence(listed, "export.formats")  # []: none
        formats = tuple(r.choice(n, f"export.formats[{i}]", known) for i, n in enumerate(entries))
        for i, name in enumerate(formats):
            if name in formats[:i]:
                r.fail(entries[i].line, f"export.formats[{i}]", f"{name!r} is listed twice")
    if "fps" in items:
        fps = r.number(items["fps"], "export.fps")
        low, high = export.FPS_RANGE
        high = min(high, export.GIF_MAX_FPS) if "gif" in formats else high
        if not low <= fps <= high:
            limit = " (a GIF's limit)" if high == export.GIF_MAX_FPS else ""
            r.fail(
                items["fps"].line,
                "export.fps",
                f"must be between {low:g} and {high:g}{limit}, got {fps:g}",
            )
    return ExportOptions(formats, fps)


def _model(r: _Reader, node: _Node, folder: Path) -> str:
    """A checkpoint folder or hub id. A relative folder that exists next to the scenario
    is taken from there; it may lie outside the scenario's folder (checkpoints do)."""
    name = r.text(node, "model")
    local = folder / Path(name).expanduser()
    return str(local.resolve()) if local.is_dir() else name


def _device(r: _Reader, node: _Node) -> str:
    """The form only ("cpu", "cuda", "cuda:1", "auto"); availability is checked at load."""
    name = r.text(node, "device")
    try:
        ok = name == "auto" or torch.device(name).type in ("cpu", "cuda")
    except (RuntimeError, TypeError):
        ok = False
    if not ok:
        r.fail(node.line, "device", f"unknown device {name!r}; expected cpu, cuda, cuda:N or auto")
    return name


def _chains():
    """workbench.chains, imported when first needed (tests may put a stand-in first)."""
    return importlib.import_module("workbench.chains")


def _export_module():
    """workbench.export, imported when first needed (tests may put a stand-in first)."""
    return importlib.import_module("workbench.export")

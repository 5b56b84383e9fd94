"""Scenario files: the examples validate, bad files fail at the right file:line:field,
and the runner drives a session through the chains, saving after every step.

The runner tests use stand-in chain and export modules (`fake_chains`, `fake_export`)
that make real turns on the tiny model: they check the runner's wiring (start, argument
passing, saves, run.json, export call, output-folder rules), not the chains themselves.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import shutil
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from bagel.errors import InputError
from workbench.params import GenerationParams
from workbench.scenario.read import ScenarioError, load_scenario
from workbench.scenario.run import check_for_model, run_scenario
from workbench.scenario.schema import CHAIN_ARGS, TOP_KEYS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "scenarios").glob("*.yaml"))
ACTIONS = (
    *("forward", "back", "turn_left", "turn_right"),
    *("look_up", "look_down", "strafe_left", "strafe_right"),
)
FORMATS = frozenset({"png", "gif", "mp4", "sheet", "story", "session"})


# -- stand-ins for workbench.chains and workbench.export ------------------------------


@dataclass
class Frame:
    image: Image.Image
    caption: str | None
    turn: int
    label: str


@dataclass
class ChainResult:
    kind: str
    frames: list[Frame]
    trace: list = field(default_factory=list)
    stopped: str | None = None


@dataclass
class Beat:
    text: str
    image: Image.Image | None = None


def fake_chains() -> types.ModuleType:
    """Each chain: one text turn per unit of work, and a generated image after it when
    `generate` is set (off by default: generating is the slow part, on two CPU cores)."""
    module = types.ModuleType("workbench.chains")
    module.ACTIONS, module.Beat, module.calls, module.generate = ACTIONS, Beat, [], False
    module.AXES = ("vertical", "horizontal", "depth")
    module.PREDICT_MODES = ("autoregressive", "forcing")
    module.SCHEDULES = ("autoregressive", "pyramid", "uniform")

    def frames(session, kind, labels, params):
        out = []
        for label in labels:
            session.add_text(label)
            image = session.generate_image(params) if module.generate else None
            out.append(Frame(image, None, len(session.turns) - 1, label))
        return ChainResult(kind, out, [f"{kind}: {len(out)} frames"])

    def navigate(session, actions, params=None, templates=None, progress=None):
        module.calls.append(("navigate", actions, templates, params))
        return frames(session, "navigate", [(templates or {}).get(a, a) for a in actions], params)

    def story(session, beats, params=None, caption=False, progress=None):
        module.calls.append(("story", beats, caption, params))
        for beat in beats:
            if beat.image is not None:
                session.add_image(beat.image)
        return frames(session, "story", [b.text for b in beats], params)

    def edit(session, instruction, params=None, think=False, max_rounds=1, progress=None):
        module.calls.append(("edit", instruction, think, max_rounds, params))
        if instruction == "fail":
            raise InputError("the chain refused this instruction")
        return frames(session, "edit", [instruction], params)

    module.navigate, module.story, module.edit = navigate, story, edit
    return module


def fake_export() -> types.ModuleType:
    """Records its calls; the formats and fps limits of workbench.export."""
    module = types.ModuleType("workbench.export")
    module.FORMATS, module.FPS_RANGE, module.GIF_MAX_FPS, module.calls = FORMATS, (0.1, 60), 50, []

    def export_session(source, out, formats, *, fps=4, overwrite=False):
        module.calls.append((source, Path(out), formats, fps, overwrite))
        return Path(out)

    module.export_session = export_session
    return module


@pytest.fixture(autouse=True)
def modules(monkeypatch):
    """The real chains and export modules where present (validation reads their names
    and limits), else the stand-ins."""
    for name, fake in (("workbench.chains", fake_chains), ("workbench.export", fake_export)):
        try:
            importlib.import_module(name)
        except ImportError:
            monkeypatch.setitem(sys.modules, name, fake())


@pytest.fixture
def fakes(monkeypatch):
    """Stand-in chains and exporter for the runner tests, whatever is installed."""
    chains, export = fake_chains(), fake_export()
    monkeypatch.setitem(sys.modules, "workbench.chains", chains)
    monkeypatch.setitem(sys.modules, "workbench.export", export)
    return chains, export


# -- the examples ---------------------------------------------------------------------


def test_six_examples_with_every_chain():
    assert len(EXAMPLES) >= 6
    chains_used = set()
    for path in EXAMPLES:
        scenario = load_scenario(path)
        chains_used |= {step.chain for step in scenario.steps}
        assert scenario.source == path.resolve()
    assert chains_used == {"navigate", "rotate", "predict", "story", "edit", "agent"}


def test_examples_fit_the_tiny_model(pipe):
    for path in EXAMPLES:
        check_for_model(load_scenario(path), pipe)


def test_example_images_are_small_and_drawn_by_the_script():
    sys.path.insert(0, str(ROOT / "scenarios"))
    try:
        import make_images
    finally:
        sys.path.remove(str(ROOT / "scenarios"))
    for name in make_images.IMAGES:
        path = ROOT / "scenarios" / "images" / name
        assert path.stat().st_size < 8_000
        committed = Image.open(path).convert("RGB")
        assert committed.tobytes() == make_images.draw(name).tobytes(), name


def test_example_values_reach_the_model():
    scenario = load_scenario(ROOT / "scenarios" / "street_navigation.yaml")
    assert scenario.seed == 1 and scenario.defaults.seed == 1
    assert scenario.defaults.cfg_interval == (0.0, 1.0)
    assert scenario.start.image == ROOT / "scenarios" / "images" / "street.png"
    first, second, third = scenario.steps
    assert first.args == {"actions": ["forward", "forward", "turn_left", "look_up"]}
    assert second.args["templates"] == {"forward": "walk ten steps further along the street"}
    assert third.chain == "edit" and third.params == scenario.defaults
    assert scenario.export.formats == ("png", "gif", "sheet") and scenario.export.fps == 2
    turntable = load_scenario(ROOT / "scenarios" / "object_turntable.yaml")
    override = turntable.steps[1].params
    assert override.cfg_text_scale == 5.0 and override.num_timesteps == 6


def test_docs_example_validates(tmp_path):
    text = (ROOT / "docs" / "scenarios.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert blocks, "docs/scenarios.md has no yaml example"
    shutil.copytree(ROOT / "scenarios" / "images", tmp_path / "images")
    (tmp_path / "example.yaml").write_text(blocks[0])
    assert load_scenario(tmp_path / "example.yaml").steps


def test_docs_name_every_key():
    text = (ROOT / "docs" / "scenarios.md").read_text()
    keys = [f.name for f in dataclasses.fields(GenerationParams)] + list(TOP_KEYS)
    keys += [key for spec in CHAIN_ARGS.values() for key in spec]
    keys += list(sys.modules["workbench.export"].FORMATS)
    chains = sys.modules["workbench.chains"]
    keys += [*chains.ACTIONS, *chains.AXES, *chains.PREDICT_MODES, *chains.SCHEDULES]
    assert not [key for key in keys if f"`{key}`" not in text]


# -- errors name file, line and field -------------------------------------------------

BASE = """\
name: test
seed: 3
defaults:
  num_timesteps: 2
  height: 64
  width: 64
start:
  image: pic.png
steps:
  - navigate:
      actions: [forward, turn_left]
  - edit:
      instruction: make it red
export:
  formats: [png]
"""


def write(tmp_path: Path, text: str) -> Path:
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "pic.png")
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


def line_of(text: str, snippet: str, nth: int = 0) -> int:
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if snippet in line]
    return lines[nth]


def fails(path: Path, line: int | None, field: str | None, fragment: str, **kwargs) -> str:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path, **kwargs)
    err = caught.value
    assert (err.line, err.field) == (line, field), str(err)
    where = f"{path}:{line}" if line is not None else f"{path}"
    assert str(err).startswith(f"{where}: {field}: " if field else f"{where}: "), str(err)
    assert fragment in str(err), str(err)
    return str(err)


def test_base_is_valid(tmp_path):
    scenario = load_scenario(write(tmp_path, BASE))
    assert [s.chain for s in scenario.steps] == ["navigate", "edit"]
    assert scenario.defaults.height == 64 and scenario.defaults.seed == 3
    assert scenario.steps[1].line == 12


@pytest.mark.parametrize(
    ("old", "new", "snippet", "field", "fragment"),
    [
        # unknown keys, with the closest known one suggested
        ("name: test", "nmae: test", "nmae", "nmae", "did you mean 'name'?"),
        ("  height: 64", "  hieght: 64", "hieght", "defaults.hieght", "did you mean 'height'?"),
        ("      actions:", "      action:", "action:", "steps[0].navigate.action", "'actions'"),
        # unknown actions and chains
        (
            "[forward, turn_left]",
            "[forward, jump]",
            "jump",
            "steps[0].navigate.actions[1]",
            "unknown action 'jump'; expected one of forward, back",
        ),
        ("  - edit:", "  - edti:", "edti", "steps[1]", "unknown step 'edti'; did you mean 'edit'?"),
        # wrong types
        (
            "num_timesteps: 2",
            "num_timesteps: many",
            "num_timesteps",
            "defaults.num_timesteps",
            "expected an integer, got 'many'",
        ),
        ("seed: 3", "seed: 1.5", "seed", "seed", "expected an integer"),
        (
            "instruction: make it red",
            "instruction: [a, b]",
            "instruction",
            "steps[1].edit.instruction",
            "expected text, got a list",
        ),
        ("formats: [png]", "formats: png", "formats", "export.formats", "expected a list"),
        # out of range, also as GenerationParams itself judges it
        (
            "num_timesteps: 2",
            "num_timesteps: 1",
            "num_timesteps",
            "defaults.num_timesteps",
            "must be an integer between 2 and 1000, got 1",
        ),
        (
            "num_timesteps: 2",
            "cfg_interval: [0.8, 0.2]",
            "cfg_interval",
            "defaults.cfg_interval",
            "0 <= lo <= hi <= 1",
        ),
        (
            "num_timesteps: 2",
            "cfg_renorm_min: 3",
            "cfg_renorm_min",
            "defaults.cfg_renorm_min",
            "must be between 0 and 1, got 3",
        ),
        (
            "seed: 3",
            "seed: -1",
            "seed",
            "seed",
            "must be an integer between 0 and 2**63-1, got -1",
        ),
        (
            "formats: [png]",
            "formats: [png, avi]",
            "formats",
            "export.formats[1]",
            "unknown value 'avi'",
        ),
        (
            "formats: [png]",
            "formats: [png]\n  fps: 0",
            "fps",
            "export.fps",
            "must be between 0.1 and 60, got 0",
        ),
        (
            "formats: [png]",
            "formats: [png, gif]\n  fps: 55",
            "fps",
            "export.fps",
            "must be between 0.1 and 50 (a GIF's limit), got 55",
        ),
        (
            "  height: 64\n  width: 64\n",
            "  width: 64\n",
            "width",
            "defaults.width",
            "height and width must be given together",
        ),
        ("seed: 3", "seed: 3\ndevice: gpu", "device", "device", "unknown device 'gpu'"),
        ("seed: 3", "seed: 3\ndtype: float8", "dtype", "dtype", "unknown value 'float8'"),
        # images: missing, not an image
        ("image: pic.png", "image: nope.png", "image:", "start.image", "file not found"),
        ("image: pic.png", "image: scenario.yaml", "image:", "start.image", "not an image"),
        # structure
        ("seed: 3", "seed: 3\nseed: 4", "seed: 4", "seed", "duplicate key (first given on line 2)"),
        (
            "  num_timesteps: 2",
            "  num_timesteps: 2\n  seed: 9",
            "seed: 9",
            "defaults.seed",
            "top-level `seed:`",
        ),
        (
            "  - edit:\n      instruction: make it red\n",
            "  - edit:\n      instruction: make it red\n    params: {seed: 1}\n",
            "- edit",
            "steps[1]",
            "found edit, params",
        ),
        (
            "  - edit:\n      instruction: make it red\n",
            "  - rotate: {degrees: 90}\n",
            "rotate",
            "steps[1].rotate",
            "missing required key 'steps'",
        ),
        (
            "  - edit:\n      instruction: make it red\n",
            "  - predict: {frames: 2, window: 2}\n",
            "predict",
            "steps[1].predict.window",
            "must be 1 unless mode is forcing",
        ),
        (
            "  - edit:\n      instruction: make it red\n",
            "  - predict: {frames: 2, schedule: pyramid}\n",
            "predict",
            "steps[1].predict.schedule",
            "must be 'autoregressive' unless mode is forcing",
        ),
        (
            "  - edit:\n      instruction: make it red\n",
            "  - rotate: {degrees: 90, steps: 2, axis: diagonal}\n",
            "rotate",
            "steps[1].rotate.axis",
            "unknown value 'diagonal'; expected one of vertical, horizontal, depth",
        ),
        (
            "  - edit:\n      instruction: make it red\n",
            "  - rotate: {degrees: 90, steps: 2, template: 'turn it {angle}'}\n",
            "rotate",
            "steps[1].rotate.template",
            "the template uses unknown placeholder(s) ['angle']; use {degrees}, {axis}",
        ),
        (
            "  - edit:\n      instruction: make it red\n",
            "  - agent: {goal: the door, actions: [forward, back, forward]}\n",
            "agent",
            "steps[1].agent.actions[2]",
            "'forward' is listed twice",
        ),
        (
            "  - edit:\n      instruction: make it red\n",
            "  - predict: {frames: 2, window: 3, mode: forcing}\n",
            "predict",
            "steps[1].predict.window",
            "must be <= frames (2)",
        ),
        (
            "  - edit:\n      instruction: make it red\n",
            "  - predict:\n      frames: 3\n      window: 2\n      mode: forcing\n"
            "      schedule: pyramid\n      params: {feature_cache: taylorseer}\n",
            "window: 2",
            "steps[1].predict.window",
            "must be 1 with feature_cache 'taylorseer'",
        ),
        (
            "  - edit:\n      instruction: make it red\n",
            "  - rotate: {degrees: 400, steps: 2}\n",
            "rotate",
            "steps[1].rotate.degrees",
            "between -360 and 360",
        ),
        (
            "  - edit:\n      instruction: make it red\n",
            "  - edit: {instruction: x, max_rounds: 0}\n",
            "max_rounds",
            "steps[1].edit.max_rounds",
            "must be an integer between 1 and 256, got 0",
        ),
        (
            "  - edit:\n      instruction: make it red\n",
            "  - story: {beats: [{text: a, image: nope.png}]}\n",
            "story",
            "steps[1].story.beats[0].image",
            "file not found",
        ),
        (
            "  - edit:\n      instruction: make it red\n",
            "  - edit:\n      instruction: x\n      params: {height: 4.5, width: 64}\n",
            "params",
            "steps[1].edit.params.height",
            "expected an integer, got 4.5",
        ),
        (
            "start:\n  image: pic.png\n",
            "",
            "- navigate",
            "steps[0].navigate",
            "needs an image to start from",
        ),
        (
            "start:\n  image: pic.png\n",
            "start:\n  image: pic.png\n  prompt: x\n",
            "start:",
            "start",
            "exactly one of `image` or `prompt`",
        ),
        (
            "\nsteps:",
            "\nsteps: !!python/object/apply:os.system [echo]\nold_steps:",
            "os.system",
            "steps",
            "unsupported tag",
        ),
        ("name: test", "<<: {name: x}", "<<", "document", "merge keys (<<) are not supported"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path, old, new, snippet, field, fragment):
    assert old in BASE
    text = BASE.replace(old, new, 1)
    fails(write(tmp_path, text), line_of(text, snippet), field, fragment)


def test_malformed_yaml(tmp_path):
    text = BASE.replace("[forward, turn_left]", "[forward, turn_left")
    fails(write(tmp_path, text), line_of(text, "- edit"), "yaml", "expected ',' or ']'")


def test_empty_and_non_mapping_files(tmp_path):
    fails(write(tmp_path, ""), 1, "document", "the file is empty")
    fails(write(tmp_path, "# only a comment\n"), 1, "document", "the file is empty")
    fails(write(tmp_path, "- navigate\n- edit\n"), 1, "document", "expected a mapping")
    fails(write(tmp_path, "steps: []\n"), 1, "steps", "empty list")
    fails(write(tmp_path, "name: x\n"), 1, "document", "missing required key 'steps'")
    fails(write(tmp_path, "a: &x [*x]\n"), 1, "a[0]", "an alias refers to itself")


def test_unreadable_files(tmp_path):
    fails(tmp_path / "none.yaml", None, None, "file not found")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00name")
    fails(tmp_path / "bin.yaml", 1, None, "not UTF-8 text (byte 0xff at offset 0)")


def test_paths_may_not_leave_the_scenario_folder(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "outside.png")
    text = BASE.replace("image: pic.png", "image: ../outside.png")
    path = write(inner, text)
    fails(path, line_of(text, "image:"), "start.image", "outside the scenario's folder")
    absolute = BASE.replace("image: pic.png", f"image: {tmp_path / 'outside.png'}")
    fails(write(inner, absolute), line_of(absolute, "image:"), "start.image", "outside")
    (inner / "link.png").symlink_to(tmp_path / "outside.png")
    linked = BASE.replace("image: pic.png", "image: link.png")
    fails(write(inner, linked), line_of(linked, "image:"), "start.image", "outside")
    allowed = load_scenario(write(inner, text), allow_outside=True)
    assert allowed.start.image == tmp_path / "outside.png"


def test_step_params_override_the_defaults(tmp_path):
    text = BASE.replace(
        "instruction: make it red",
        "instruction: make it red\n      params: {num_timesteps: 3, seed: 8, cfg_img_scale: 2}",
    )
    scenario = load_scenario(write(tmp_path, text))
    navigate, edit = scenario.steps
    assert navigate.params == scenario.defaults
    assert (edit.params.num_timesteps, edit.params.seed, edit.params.cfg_img_scale) == (3, 8, 2.0)
    assert edit.params.height == 64  # inherited from the defaults


def test_sizes_are_checked_against_the_model(tmp_path, pipe):
    text = BASE.replace("height: 64\n  width: 64", "height: 256\n  width: 64")
    scenario = load_scenario(write(tmp_path, text))  # the file alone cannot know the limit
    with pytest.raises(ScenarioError) as caught:
        run_scenario(scenario, pipe, tmp_path / "out")
    assert caught.value.line == line_of(text, "height") and caught.value.field == "defaults.height"
    assert "between 16 and 128" in str(caught.value)
    assert not (tmp_path / "out").exists()  # refused before anything was written


# -- running ---------------------------------------------------------------------------

# No start and a story first: with the fake chains not generating, nothing is computed
# but the text turns.
TEXT_ONLY = """\
steps:
  - story:
      beats: [one, two]
  - edit:
      instruction: make it red
export:
  formats: []
"""


def test_run_scenario_start_steps_saves_and_export(tmp_path, pipe, fakes):
    chains, export = fakes
    chains.generate = True
    path = write(tmp_path, BASE.replace("[png]", "[png, gif]\n  fps: 3"))
    scenario, out, seen = load_scenario(path), tmp_path / "out", []
    result = run_scenario(scenario, pipe, out, progress=lambda *a: seen.append(a))
    # start image, 2 navigation frames (text + image each), 1 edit frame
    assert [(t.role, t.kind) for t in result.session.turns] == [("user", "image")] + [
        ("user", "text"),
        ("model", "image"),
    ] * 3
    assert seen == [(1, 3, "start"), (2, 3, "steps[0].navigate"), (3, 3, "steps[1].edit")]
    kind, actions, templates, params = chains.calls[0]
    assert (kind, actions, templates) == ("navigate", ["forward", "turn_left"], None)
    assert params == scenario.defaults and chains.calls[1][1] == "make it red"
    assert result.results[0].frames[1].label == "turn_left"
    assert result.results[1].frames[0].image.size == (64, 64)
    saved = json.loads((out / "session" / "session.json").read_text())
    assert len(saved["turns"]) == 7 and saved["turns"][-1]["params"]["seed"] == 3
    run = json.loads((out / "run.json").read_text())
    assert run["scenario"] == str(path.resolve()) and run["steps_done"] == 2
    assert run["steps"][0]["frames"][1] == {"turn": 4, "label": "turn_left", "caption": None}
    assert export.calls == [(result.session, out / "export", ["png", "gif"], 3.0, True)]
    assert result.exported == out / "export"


def test_run_saves_after_each_step_and_names_the_failing_one(tmp_path, pipe, fakes):
    path = write(tmp_path, TEXT_ONLY.replace("make it red", "fail"))
    with pytest.raises(ScenarioError) as caught:
        run_scenario(load_scenario(path), pipe, tmp_path / "out")
    assert (caught.value.line, caught.value.field) == (4, "steps[1].edit")
    assert "the chain refused" in str(caught.value)
    saved = json.loads((tmp_path / "out" / "session" / "session.json").read_text())
    assert len(saved["turns"]) == 2  # the story step survived
    assert json.loads((tmp_path / "out" / "run.json").read_text())["steps_done"] == 1


def test_run_from_a_prompt_with_a_story(tmp_path, pipe, fakes):
    chains, _ = fakes
    text = (
        "seed: 2\ndefaults: {num_timesteps: 2, height: 32, width: 32}\n"
        "start: {prompt: a lighthouse}\n"
        "steps:\n  - story:\n      beats: [one, {text: two, image: pic.png}]\n"
        "export: {formats: []}\n"
    )
    result = run_scenario(load_scenario(write(tmp_path, text)), pipe, tmp_path / "out")
    turns = [(t.role, t.kind) for t in result.session.turns]
    assert turns[:2] == [("user", "text"), ("model", "image")]
    beats = chains.calls[0][1]
    assert [b.text for b in beats] == ["one", "two"] and beats[0].image is None
    assert beats[1].image == str(tmp_path / "pic.png")
    assert result.session.turns[2].image.size == (64, 64)  # the beat's picture went in
    assert result.exported is None


def test_output_folder_rules(tmp_path, pipe, fakes):
    first = write(tmp_path, TEXT_ONLY)
    out = tmp_path / "out"
    run_scenario(load_scenario(first), pipe, out)
    stale = out / "session" / "images" / "0099.png"
    stale.write_bytes(b"old")
    run_scenario(load_scenario(first), pipe, out)  # a rerun replaces its own session
    assert not stale.exists()
    other = tmp_path / "other"
    other.mkdir()
    second = write(other, TEXT_ONLY)
    with pytest.raises(ScenarioError) as caught:
        run_scenario(load_scenario(second), pipe, out)
    assert caught.value.field == "out_dir" and str(first.resolve()) in str(caught.value)
    assert caught.value.file == str(out / "session" / "session.json")
    (tmp_path / "bare" / "session").mkdir(parents=True)
    (tmp_path / "bare" / "session" / "session.json").write_text("{}")
    with pytest.raises(ScenarioError, match="unknown origin"):
        run_scenario(load_scenario(first), pipe, tmp_path / "bare")
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "session.json").write_text("{}")
    with pytest.raises(ScenarioError, match="is a saved session"):
        run_scenario(load_scenario(first), pipe, tmp_path / "saved")

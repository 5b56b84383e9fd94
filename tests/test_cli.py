"""The `workbench` command: subcommands, exit codes, output folders, Ctrl-C.

Runs go through `main([...])` in-process on the tiny checkpoint, with two small
scenarios (two timesteps, one frame per step). The full demo (every example in
scenarios/) is what scripts/demo.sh runs; here `demo` runs the two small ones.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import bagel.checkpoint
import workbench.chains
from bagel.errors import InputError
from workbench import models, store
from workbench.cli import common
from workbench.cli import scenarios as scenario_verbs
from workbench.cli.main import main
from workbench.cli.parser import build_parser
from workbench.outputs import MARKER

ROOT = Path(__file__).resolve().parent.parent
HEAD = """\
seed: 1
defaults:
  num_timesteps: 2
  cfg_img_scale: 2.0
  cfg_interval: [0.0, 1.0]
  cfg_renorm_type: text_channel
start:
  image: street.png
"""
WALK = HEAD + "steps:\n  - navigate: {actions: [forward]}\n  - navigate: {actions: [turn_left]}\n"
TURN = HEAD + "steps:\n  - rotate: {degrees: 90, steps: 1}\nexport:\n  formats: [png, gif]\n"


def scenarios(folder: Path, **texts: str) -> list[str]:
    """Scenario files named after the keywords, beside a copy of the example street image."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "scenarios" / "images" / "street.png", folder / "street.png")
    paths = []
    for name, text in texts.items():
        (folder / f"{name}.yaml").write_text(text)
        paths.append(str(folder / f"{name}.yaml"))
    return paths


@pytest.fixture
def loads(monkeypatch, pipe, tiny_dir):
    """Count model loads; each returns the shared tiny pipeline. The default checkpoint is
    the test one, so nothing is written under the working folder."""
    calls = []

    def load(path, device="cpu", dtype=None, **_):
        calls.append((str(path), device, dtype))
        return pipe

    monkeypatch.setattr(bagel.checkpoint, "load", load)
    monkeypatch.setattr(models, "DEFAULT_TINY", tiny_dir)
    return calls


@pytest.fixture(scope="module")
def ran(tmp_path_factory, tiny_dir):
    """One real run of `walk` (model loaded from the folder), for replay and export."""
    folder = tmp_path_factory.mktemp("ran")
    (path,) = scenarios(folder, walk=WALK)
    assert main(["run", path, "--model", str(tiny_dir), "--out", str(folder / "runs")]) == 0
    return folder / "runs" / "walk" / "session"


def test_make_tiny_and_info(tmp_path, capsys):
    assert main(["make-tiny", str(tmp_path / "t")]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "t")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["llm"]["num_hidden_layers"] == 2 and info["vit"]["num_hidden_layers"] == 2
    assert info["weights"]["ema.safetensors"]["tensors"] > 0 and len(info["identity"]) == 64


def test_run_loads_the_model_once_for_several_scenarios(tmp_path, loads, monkeypatch, capsys):
    denoised = []  # the denoising bar's updates: (scenario, done, total)
    monkeypatch.setattr(
        scenario_verbs.Bars, "denoised", lambda bars, *n: denoised.append((bars.name, *n))
    )
    paths = scenarios(tmp_path, walk=WALK, turn=TURN)
    out = tmp_path / "runs"
    assert main(["run", *paths, "--out", str(out)]) == 0
    assert loads == [(str(models.DEFAULT_TINY), "cpu", None)]
    assert denoised == [("walk", 1, 1), ("walk", 1, 1), ("turn", 1, 1)]  # one step a frame
    printed = capsys.readouterr().out
    assert common.RANDOM_WEIGHTS_NOTE in printed
    assert re.search(rf"^walk +2 +[0-9.]+  {out / 'walk'}$", printed, re.M)
    assert re.search(rf"^turn +1 +[0-9.]+  {out / 'turn'}$", printed, re.M)
    walk = json.loads((out / "walk" / "run.json").read_text())
    assert walk["steps_done"] == 2 and len(walk["steps"][1]["frames"]) == 1
    assert sorted(p.name for p in (out / "turn" / "export").iterdir()) == [
        *(MARKER, "frames", "frames.gif", "metrics.csv", "metrics.json"),
    ]
    assert (out / "walk" / "export" / "frames" / "frame_0002.png").is_file()


def test_a_bad_scenario_stops_everything_before_the_model_loads(tmp_path, loads, capsys):
    bad = WALK.replace("[turn_left]", "[turn_left, jump]")
    paths = scenarios(tmp_path, walk=WALK, bad=bad)
    assert main(["run", *paths, "--out", str(tmp_path / "runs")]) == 2
    line = 11  # "  - navigate: {actions: [turn_left, jump]}"
    assert bad.splitlines()[line - 1].endswith("jump]}")
    err = capsys.readouterr().err
    assert err.startswith(f"error: {paths[1]}:{line}: steps[1].navigate.actions[1]: unknown")
    assert "Traceback" not in err and err.count("\n") == 1
    assert loads == [] and not (tmp_path / "runs").exists()


def test_scenarios_naming_different_models_are_refused_unless_model_is_given(
    tmp_path, loads, tiny_dir, capsys
):
    paths = scenarios(tmp_path, walk=WALK, turn="model: /elsewhere/bagel\n" + TURN)
    out = tmp_path / "runs"
    assert main(["run", *paths, "--out", str(out)]) == 2
    assert "different models (walk.yaml: unset; turn.yaml: /elsewhere/bagel)" in (
        capsys.readouterr().err
    )
    assert loads == [] and not out.exists()
    assert main(["run", *paths, "--out", str(out), "--model", str(tiny_dir)]) == 0
    assert loads == [(str(tiny_dir), "cpu", None)]


def test_an_out_folder_holding_another_session_is_refused(tmp_path, loads, ran, capsys):
    (path,) = scenarios(tmp_path, walk=WALK)
    out = tmp_path / "runs"
    shutil.copytree(ran, out / "walk")  # out/walk is now a saved session
    before = sorted(out.rglob("*"))
    assert main(["run", path, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'walk' / 'session.json'}: out_dir: this folder is a saved session" in err
    assert main(["run", path, "--out", str(ran)]) == 2  # --out itself is a session
    assert f"{ran / 'session.json'}: --out: " in capsys.readouterr().err
    assert loads == [] and sorted(out.rglob("*")) == before
    twin = scenarios(tmp_path / "twin", walk=TURN)  # another walk.yaml: the same out/walk
    assert main(["run", path, *twin, "--out", str(tmp_path / "new")]) == 2
    assert f"would write to {tmp_path / 'new' / 'walk'} like {path}" in capsys.readouterr().err
    assert loads == [] and not (tmp_path / "new").exists()


def test_a_failing_scenario_is_reported_and_the_next_one_runs(tmp_path, loads, monkeypatch, capsys):
    def fails(error):
        def chain(*args, **kwargs):
            raise error

        return chain

    paths = scenarios(tmp_path, walk=WALK, turn=TURN)
    out = tmp_path / "runs"
    with monkeypatch.context() as patch:  # a bug: its traceback, then the next scenario
        patch.setattr(workbench.chains, "navigate", fails(RuntimeError("a bug")))
        assert main(["run", *paths, "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" in captured.err and "RuntimeError: a bug" in captured.err
    assert re.search(r"^walk +- .*\(failed\)$", captured.out, re.M)
    assert (out / "turn" / "export" / "frames.gif").is_file()
    with monkeypatch.context() as patch:  # a refused request: one line at its step
        patch.setattr(workbench.chains, "rotate", fails(InputError("no turning")))
        assert main(["run", *paths, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {paths[1]}:10: steps[0].rotate: no turning\n"
    assert json.loads((out / "walk" / "run.json").read_text())["steps_done"] == 2


def test_ctrl_c_stops_and_leaves_the_finished_steps_saved(
    tmp_path, loads, pipe, monkeypatch, capsys
):
    real, calls = workbench.chains.navigate, []

    def navigate(session, *args, progress=None, **kwargs):
        """The second call is interrupted in its first denoising step."""
        calls.append(len(session.turns))

        def interrupt(done, total):
            raise KeyboardInterrupt

        return real(session, *args, progress=interrupt if len(calls) == 2 else progress, **kwargs)

    monkeypatch.setattr(workbench.chains, "navigate", navigate)
    paths = scenarios(tmp_path, walk=WALK, turn=TURN)
    out = tmp_path / "runs"
    assert main(["run", *paths, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    saved = out / "walk" / "session"
    assert f"interrupted: walk: the start and 1 of 2 steps saved in {saved}" in err
    session = store.load(saved, pipe)
    assert [(t.role, t.kind) for t in session.turns] == [
        ("user", "image"),
        ("user", "text"),
        ("model", "image"),
    ]
    assert json.loads((out / "walk" / "run.json").read_text())["steps_done"] == 1
    assert not (out / "walk" / "export").exists() and not (out / "turn").exists()


def test_replay_exits_0_when_identical_and_1_when_a_frame_differs(ran, tiny_dir, capsys):
    assert main(["replay", str(ran), "--model", str(tiny_dir)]) == 0
    assert "replayed 2 frame(s) and 0 text(s)" in capsys.readouterr().out
    assert json.loads((ran / "replay_report.json").read_text())["frames"][0]["max_abs_diff"] == 0
    image_file = next((ran / "images").glob("0004-*.png"))  # the last generated frame
    original = image_file.read_bytes()
    try:
        image = Image.open(image_file).convert("RGB")
        image.putpixel((0, 0), tuple(255 - c for c in image.getpixel((0, 0))))
        image.save(image_file)
        assert main(["replay", str(ran), "--model", str(tiny_dir)]) == 1
        assert "1 frame(s) and 0 text(s) differ" in capsys.readouterr().out
    finally:
        image_file.write_bytes(original)


def test_export_writes_the_formats_asked_for_and_all_by_default(ran, tmp_path, capsys):
    out = tmp_path / "picked"
    assert main(["export", str(ran), "--out", str(out), "--mp4", "--gif", "--sheet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        *(MARKER, "contact_sheet.png", "frames.gif", "frames.mp4", "metrics.csv", "metrics.json"),
    ]
    assert main(["export", str(ran), "--out", str(out), "--png"]) == 2  # not empty
    assert "folder is not empty" in capsys.readouterr().err
    assert main(["export", str(ran)]) == 0
    every = ran.with_name("session-export")
    assert {"frames", "frames.mp4", "story.html", "session"} <= {p.name for p in every.iterdir()}
    assert main(["export", str(ran.parent / "missing")]) == 2
    assert "no saved session here" in capsys.readouterr().err


def test_demo_runs_every_example_and_says_the_weights_are_random(
    tmp_path, loads, monkeypatch, capsys
):
    scenarios(tmp_path / "examples", walk=WALK, turn=TURN)
    monkeypatch.setattr(scenario_verbs, "EXAMPLES", tmp_path / "examples")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        printed.count(common.RANDOM_WEIGHTS_NOTE) == 2 and scenario_verbs.REAL_MODEL_HINT in printed
    )
    assert "scenario  frames  seconds  output" in printed
    assert (out / "turn" / "export" / "frames.gif").is_file()
    assert (out / "walk" / "session" / "session.json").is_file()
    assert main(["demo", "--out", str(out)]) == 0  # a rerun replaces its own outputs


def test_bad_input_exits_with_2_in_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "llm_config.json").write_text("{}")
    (path,) = scenarios(tmp_path, walk=WALK)
    out = tmp_path / "o"
    assert main(["run", path, "--model", str(tmp_path / "half"), "--out", str(out)]) == 2
    assert "missing checkpoint file(s)" in capsys.readouterr().err
    assert not out.exists()


def test_the_installed_command_exits_2_without_a_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "workbench", "run", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert done.stderr == f"error: {tmp_path / 'nope.yaml'}: file not found\n"


def test_compile_reaches_the_loader_and_is_refused_with_ray(
    tmp_path, monkeypatch, pipe, tiny_dir, capsys
):
    seen = []
    monkeypatch.setattr(bagel.checkpoint, "load", lambda path, **kw: seen.append(kw) or pipe)
    monkeypatch.setattr(models, "DEFAULT_TINY", tiny_dir)
    paths = scenarios(tmp_path, walk=WALK)
    assert main(["run", *paths, "--out", str(tmp_path / "runs"), "--compile"]) == 0
    assert [kw["compile"] for kw in seen] == [True]
    assert main(["run", *paths, "--out", str(tmp_path / "ray"), "--compile", "--ray"]) == 2
    assert "--compile is not supported with --ray" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "runs" / "walk" / "session"), "--compile"]) == 0
    assert [kw["compile"] for kw in seen] == [True, True]


def test_help_says_what_the_command_does_and_its_examples_run(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "Run BAGEL on scenario files" in printed
    examples = re.findall(r"^  workbench ([a-z-]+)(.*?)(?:  #.*)?$", printed, re.M)
    assert len(examples) >= 5
    for verb, rest in examples:  # each example parses: its verb and options exist
        args = build_parser().parse_args([verb, *rest.split()])
        assert args.command == verb

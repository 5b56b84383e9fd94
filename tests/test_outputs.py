"""Outputs never destroy inputs: export, run, replay and the app's saves refuse output
paths that are, hold or lie inside a session (or a scenario's files), links, files or
read-only folders, before writing anything; the session folder stays byte-identical
(every file hashed before and after) and no file outside the target is opened (an audit
hook on "open")."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bagel.checkpoint
from bagel.errors import BagelError
from workbench import models
from workbench.app import actions
from workbench.app.files import UploadError, pack_folder, save_session, unpack_session
from workbench.cli.main import main
from workbench.export import export_session
from workbench.outputs import MARKER, REPORT, OutputError, check_output_folder
from workbench.params import GenerationParams
from workbench.scenario.positions import scenario_positions
from workbench.scenario.read import ScenarioError, load_scenario
from workbench.scenario.run import run_scenario
from workbench.session import Session
from workbench.store import replay, save

ROOT = Path(__file__).resolve().parent.parent
FAST = GenerationParams(num_timesteps=2, height=32, width=32, seed=3)

# -- an audit hook that records the files opened while it is on ------------------------

_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], str | bytes | Path):
        _OPENED.append(os.path.abspath(os.fsdecode(args[0])))


sys.addaudithook(_audit)  # cannot be removed: it records only inside `opened()`


class opened:
    """with opened(root) as files: ... -> the files under `root` opened meanwhile."""

    def __init__(self, root: Path):
        self.root, self.files = str(root.resolve()), []

    def __enter__(self) -> list[str]:
        global _OPENED
        _OPENED = self.files
        return self.files

    def __exit__(self, *exc) -> None:
        global _OPENED
        _OPENED = None
        self.files[:] = [f for f in self.files if f.startswith(self.root)]


def digest(folder: Path) -> dict[str, str]:
    """Every entry under folder: a file's sha256, a link's target, another entry's kind
    (nothing is followed or opened but regular files)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        name = path.relative_to(folder).as_posix()
        if stat.S_ISLNK(info.st_mode):
            out[name] = "link to " + os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[name] = "folder" if stat.S_ISDIR(info.st_mode) else oct(info.st_mode)
    return out


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(pipe, tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    session = Session(pipe)
    session.add_image(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    session.add_text("walk forward")
    session.generate_image(FAST)
    return save(session, tmp_path_factory.mktemp("template") / "session")


@pytest.fixture
def saved(template, tmp_path) -> Path:
    """A fresh copy of a saved session (one input image, one generated frame)."""
    return Path(shutil.copytree(template, tmp_path / "work" / "S"))


@pytest.fixture
def loads(monkeypatch, pipe, tiny_dir):
    monkeypatch.setattr(bagel.checkpoint, "load", lambda *a, **k: pipe)
    monkeypatch.setattr(models, "DEFAULT_TINY", tiny_dir)


def read_only(monkeypatch, *folders: Path) -> None:
    """Make os.access report `folders` as not writable. The tests run as root, whom real
    permission bits do not stop, so the refusal is driven through the same call a user's
    read-only folder answers."""
    real, blocked = os.access, {str(f.resolve()) for f in folders}

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and str(Path(path).resolve()) in blocked:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


# -- export -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        (lambda s: s, "is the input"),
        (lambda s: s / "images" / "..", "is the input"),
        (lambda s: s / "images", "lies inside the input"),
        (lambda s: s.parent, "holds the input"),
    ],
)
def test_export_never_writes_over_or_into_its_session(saved, where, problem, capsys):
    before, out = digest(saved), where(saved)
    with opened(saved.parent) as files, pytest.raises(OutputError, match=problem):
        export_session(saved, out, overwrite=True)
    assert files == []  # refused before reading anything
    assert main(["export", str(saved), "--out", str(out), "--overwrite", "--png"]) == 2
    err = capsys.readouterr().err
    assert problem in err and str(saved) in err and str(out.resolve()) in err
    assert digest(saved) == before


def test_export_never_replaces_another_session_or_a_folder_it_did_not_make(saved, tmp_path, capsys):
    other = Path(shutil.copytree(saved, tmp_path / "other"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    before = digest(tmp_path)
    for out, problem in ((other, "is a saved session"), (mine, "is not an earlier export's")):
        with pytest.raises(OutputError, match=problem):
            export_session(saved, out, overwrite=True)
        assert main(["export", str(saved), "--out", str(out), "--overwrite"]) == 2
        assert problem in capsys.readouterr().err
    assert digest(tmp_path) == before
    # an earlier export is replaced, and only its folder is touched
    first = export_session(saved, tmp_path / "exp", formats={"png"})
    assert (first / MARKER).is_file()
    assert main(["export", str(saved), "--out", str(first), "--overwrite", "--gif"]) == 0
    assert sorted(p.name for p in first.iterdir()) == [
        *(MARKER, "frames.gif", "metrics.csv", "metrics.json")
    ]
    assert {k: v for k, v in digest(tmp_path).items() if not k.startswith("exp")} == before


def test_export_refuses_links_files_and_read_only_places(saved, tmp_path, monkeypatch, capsys):
    target = tmp_path / "real"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    (tmp_path / "file").write_text("x")
    cases = [
        (tmp_path / "link", "symbolic link"),
        (tmp_path / "file", "not a folder"),
        (tmp_path / "file" / "out", "is not a folder"),
    ]
    for out, problem in cases:
        assert main(["export", str(saved), "--out", str(out)]) == 2
        assert problem in capsys.readouterr().err
    shut = tmp_path / "shut"
    shut.mkdir()
    read_only(monkeypatch, shut)
    assert main(["export", str(saved), "--out", str(shut / "out")]) == 2
    assert "not writable (read-only)" in capsys.readouterr().err
    assert not any(target.iterdir()) and list(shut.iterdir()) == []


def test_the_session_copy_takes_only_listed_regular_files(saved, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of the session")
    (saved / "images" / "extra.png").symlink_to(secret)  # not listed: left out
    os.mkfifo(saved / "pipe")  # not listed: left out (a copy of the folder would block)
    before = digest(saved)
    with opened(tmp_path) as files:
        out = export_session(saved, tmp_path / "exp", formats={"session"})
    copied = out / "session"
    assert sorted(p.relative_to(copied).as_posix() for p in copied.rglob("*")) == sorted(
        k for k in before if k not in ("images/extra.png", "pipe")
    )
    assert {k: v for k, v in digest(copied).items()} == {
        k: v for k, v in before.items() if k not in ("images/extra.png", "pipe")
    }
    assert str(secret) not in files and str(saved / "pipe") not in files
    assert all(f.startswith((str(saved), str(tmp_path / ".exp."), str(out))) for f in files)
    assert digest(saved) == before


@pytest.mark.parametrize(
    ("kind", "problem"),
    [("link out", "symbolic link that leaves"), ("fifo", "a FIFO"), ("device", "symbolic link")],
)
def test_a_listed_file_that_is_not_a_regular_one_is_refused(saved, tmp_path, kind, problem):
    manifest = json.loads((saved / "session.json").read_text())
    image = saved / manifest["turns"][0]["image"]  # the input image: only the copy reads it
    image.unlink()
    if kind == "link out":
        outside = tmp_path / "outside.png"
        Image.new("RGB", (32, 32)).save(outside)
        image.symlink_to(outside)
    elif kind == "fifo":
        os.mkfifo(image)
    else:
        image.symlink_to("/dev/zero")
    before = digest(saved)
    with opened(tmp_path) as files, pytest.raises(BagelError) as err:
        export_session(saved, tmp_path / "exp", formats={"png", "session"})
    assert str(image) in str(err.value) and problem in str(err.value)
    assert str(image) not in files  # refused by its lstat, never opened
    assert not (tmp_path / "exp").exists() and digest(saved) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exp")]


def test_no_output_goes_inside_another_saved_session(saved, pipe, tmp_path, loads, capsys):
    other = Path(shutil.copytree(saved, tmp_path / "other"))
    path = scenario(tmp_path / "sc")
    before = digest(tmp_path)
    commands = [
        ["export", str(saved), "--out", str(other / "images" / "x")],
        ["run", str(path), "--out", str(other / "images")],
        ["replay", str(saved), "--report", str(other / "report.json")],
    ]
    for command in commands:
        assert main(command) == 2, command
        assert f"lies inside the saved session {other}" in capsys.readouterr().err
    session = Session(pipe)
    session.add_text("hello")
    with pytest.raises(OutputError, match="lies inside the saved session"):
        save_session(session, other, "mine")
    assert digest(tmp_path) == before


def test_check_output_folder_accepts_new_and_empty_folders(tmp_path):
    assert check_output_folder(tmp_path / "a" / "b", "export") == tmp_path / "a" / "b"
    (tmp_path / "empty").mkdir()
    assert check_output_folder(tmp_path / "empty", "export") == tmp_path / "empty"


# -- run --------------------------------------------------------------------------------

WALK = """\
seed: 1
defaults:
  num_timesteps: 2
  height: 32
  width: 32
start:
  image: street.png
steps:
  - navigate: {actions: [forward]}
"""


def scenario(folder: Path, text: str = WALK, name: str = "walk") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "scenarios" / "images" / "street.png", folder / "street.png")
    (folder / f"{name}.yaml").write_text(text)
    return folder / f"{name}.yaml"


def test_run_refuses_bad_output_places_before_writing(
    saved, pipe, tmp_path, loads, monkeypatch, capsys
):
    path = scenario(tmp_path / "sc")
    (tmp_path / "file").write_text("x")
    linked = tmp_path / "linked" / "walk"
    linked.mkdir(parents=True)
    (linked / "session").symlink_to(saved)  # `session` leads to another saved session
    before = digest(tmp_path)
    cases = [
        (tmp_path / "file", "is not a folder"),
        (tmp_path / "linked", "symbolic link"),
    ]
    shut = tmp_path / "shut"
    shut.mkdir()
    read_only(monkeypatch, shut)
    cases.append((shut, "not writable (read-only)"))
    loaded = load_scenario(path)
    for out, problem in cases:
        with opened(tmp_path) as files:
            assert main(["run", str(path), "--out", str(out)]) == 2, out
        assert problem in capsys.readouterr().err
        assert set(files) <= {str(path), str(path.parent / "street.png")}  # validation reads
        with pytest.raises(ScenarioError, match=re.escape(problem)):  # the API: the same
            run_scenario(loaded, pipe, out / "walk")
    assert digest(tmp_path) == {**before, "shut": "folder"}


def test_run_into_the_scenario_folder_itself_is_refused(tmp_path, loads, capsys):
    path = scenario(tmp_path / "walk")  # out/<stem> is the scenario's own folder
    before = digest(tmp_path)
    assert main(["run", str(path), "--out", str(tmp_path)]) == 2
    assert "holds the input" in capsys.readouterr().err
    assert digest(tmp_path) == before


BAD_VALUES = [
    (
        "  - story: {beats: [a cat], caption: true, params: {do_sample: true, temperature: 1.0e-300}}\n",
        "steps[1].story.params.temperature: must be >= 0.001 when sampling",
    ),
    (
        '  - rotate: {degrees: 90, steps: 1, template: "by {degrees:d}"}\n',
        "steps[1].rotate.template: not a valid template",
    ),
    ("  - rotate: {degrees: .nan, steps: 1}\n", "steps[1].rotate.degrees: must be a finite"),
    (
        "  - predict: {frames: 3, mode: forcing, window: 3, schedule: autoregressive}\n",
        "steps[1].predict.schedule: the autoregressive schedule",
    ),
]


@pytest.mark.parametrize(("step", "message"), BAD_VALUES)
def test_values_a_run_would_refuse_are_refused_by_validation(
    tmp_path, loads, step, message, capsys
):
    path = scenario(tmp_path / "sc", WALK + step)
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_scenario(path)
    assert main(["run", str(path), "--out", str(tmp_path / "runs")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_a_run_past_the_model_positions_is_refused_before_writing(tmp_path, loads, pipe, capsys):
    limit = pipe.config.llm.max_position_embeddings
    text = WALK.replace("  width: 32\n", f"  width: 32\n  max_think_tokens: {limit}\n")
    story = scenario(tmp_path / "sc", text + "  - story: {beats: [a cat], caption: true}\n")
    load_scenario(story)  # the file is fine; only the model's position limit refuses it
    many = "  - navigate: {actions: [" + ", ".join(["strafe_left"] * 256) + "]}\n"
    long = scenario(tmp_path / "sc", WALK + many * 2, name="long")
    for path, at in (
        (story, "walk.yaml:11: steps[1].story"),
        (long, "long.yaml:10: steps[1].navigate"),
    ):
        assert main(["run", str(path), "--out", str(tmp_path / "runs")]) == 2
        err = capsys.readouterr().err
        assert at in err and f"past the model's limit of {limit}" in err
    assert not (tmp_path / "runs").exists()


def test_the_position_count_is_the_one_a_run_takes(tmp_path, pipe):
    steps = """\
  - rotate: {degrees: 45, steps: 2, template: "Turn by {degrees} degrees."}
  - predict: {frames: 2, mode: forcing, window: 2, schedule: pyramid, instruction: roll}
  - story: {beats: [a cat, {text: a key, image: street.png}]}
  - edit: {instruction: make it red}
  - agent: {goal: find the door, actions: [forward, back], max_steps: 1}
"""
    loaded = load_scenario(scenario(tmp_path, WALK + steps))
    counted = scenario_positions(loaded, pipe)
    result = run_scenario(loaded, pipe, tmp_path / "out")
    turns = result.session.turns
    firsts = [r.trace[0].turn for r in result.results]  # each step's first turn
    ropes = [turns[f].before[0].rope for f in firsts] + [result.session.main.rope]
    assert [at for at, _ in counted] == [
        *("start.image", "steps[0].navigate", "steps[1].rotate", "steps[2].predict"),
        *("steps[3].story", "steps[4].edit", "steps[5].agent"),
    ]
    assert [n for _, n in counted[:5]] == ropes[:5]  # no replies, no early stop: exact
    assert all(n >= rope for (_, n), rope in zip(counted[5:], ropes[5:], strict=True))


def test_numbers_must_be_finite_everywhere_in_a_scenario(tmp_path):
    for value in (".inf", "-.inf", ".nan"):
        path = scenario(
            tmp_path, WALK.replace("  height: 32\n", f"  cfg_text_scale: {value}\n  height: 32\n")
        )
        with pytest.raises(
            ScenarioError, match=r"walk.yaml:4: defaults.cfg_text_scale: must be a finite"
        ):
            load_scenario(path)


# -- replay -----------------------------------------------------------------------------


def test_replay_on_a_read_only_session_says_where_to_put_the_report(
    saved, tmp_path, loads, monkeypatch, capsys
):
    before = digest(saved)
    read_only(monkeypatch, saved)
    assert main(["replay", str(saved)]) == 2
    err = capsys.readouterr().err
    assert "not writable (read-only)" in err and "--report PATH" in err
    report = tmp_path / "elsewhere" / "report.json"
    report.parent.mkdir()
    with opened(tmp_path) as files:
        assert main(["replay", str(saved), "--report", str(report)]) == 0
    assert f"report: {report}" in capsys.readouterr().out and report.is_file()
    assert {Path(f).parent for f in files if not f.startswith(str(saved))} == {report.parent}
    assert digest(saved) == before
    assert main(["replay", str(saved), "--report", str(report)]) == 0  # its own: replaced


def test_replay_report_may_not_replace_session_files_or_others(
    saved, tmp_path, loads, pipe, capsys
):
    before = digest(saved)
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    (tmp_path / "adir").mkdir()
    cases = [
        (saved / "session.json", "lies inside the input"),
        (next((saved / "images").iterdir()), "lies inside the input"),
        (notes, "not an earlier replay report"),
        (notes.parent / "adir", "not a regular file"),
    ]
    for report, problem in cases:
        assert main(["replay", str(saved), "--report", str(report)]) == 2
        assert problem in capsys.readouterr().err
        with pytest.raises(OutputError, match=problem):
            replay(saved, pipe, report=report)
    assert digest(saved) == before and notes.read_text() == '{"mine": true}'
    assert replay(saved, pipe).identical and (saved / REPORT).is_file()  # the default


# -- the app ----------------------------------------------------------------------------


def test_an_archive_that_does_not_open_is_removed_again(saved, tmp_path, pipe):
    broken = Path(shutil.copytree(saved, tmp_path / "broken"))
    next((broken / "images").iterdir()).write_bytes(b"not a png")
    dest = tmp_path / "sessions" / "broken"
    folder = unpack_session("broken.zip", pack_folder(broken), dest)
    with pytest.raises(BagelError):
        actions.open_saved(folder, "world", pipe, False, discard=True)(lambda *_: None)
    assert not dest.exists()
    (broken / "session.json").write_text("{not json")
    with pytest.raises(UploadError, match="not valid JSON"):
        unpack_session("broken.zip", pack_folder(broken), dest)
    assert list((tmp_path / "sessions").iterdir()) == []
    good = unpack_session("s.zip", pack_folder(saved), tmp_path / "sessions" / "s")
    actions.open_saved(good, "world", pipe, False, discard=True)(lambda *_: None)
    assert (good / "session.json").is_file()  # opened: kept


def test_app_saves_replace_only_saved_sessions(pipe, saved, tmp_path):
    session = Session(pipe)
    session.add_text("hello")
    root = tmp_path / "sessions"
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "keep.txt").write_text("mine")
    (root / "elsewhere").symlink_to(saved)
    before = digest(tmp_path)
    with pytest.raises(UploadError, match="something else than a saved session"):
        save_session(session, root, "notes", overwrite=True)
    with pytest.raises(OutputError, match="symbolic link"):
        save_session(session, root, "elsewhere", overwrite=True)
    assert digest(tmp_path) == before


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} write them) listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_the_app_started_from_another_folder_listens_on_loopback_only(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WORKBENCH_SESSIONS": str(tmp_path / "sessions")}
    log = tmp_path / "app.log"
    command = [sys.executable, "-m", "workbench", "app", "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                    break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.5)
        assert _listening(port) == {"0100007F"}  # 127.0.0.1, nothing else (no 0.0.0.0, ::)
    finally:
        process.terminate()
        process.wait(15)


def test_the_launch_command_carries_the_address_and_the_config():
    from workbench.app.launch import streamlit_command

    command = streamlit_command()
    flags = dict(zip(command[5::2], command[6::2], strict=True))
    assert command[1:5] == ["-m", "streamlit", "run", str(ROOT / "streamlit_app.py")]
    assert flags["--server.address"] == "127.0.0.1" and flags["--server.headless"] == "true"
    assert flags["--browser.gatherUsageStats"] == "false"  # from .streamlit/config.toml
    chosen = streamlit_command("0.0.0.0", 8600, ["--model", "m"])
    assert chosen[-3:] == ["--", "--model", "m"] and "0.0.0.0" in chosen and "8600" in chosen


def test_workbench_app_passes_its_options_to_the_page(monkeypatch):
    import workbench.app.launch as launch
    from workbench.app.model import app_options

    seen = {}
    monkeypatch.setattr(launch, "run_app", lambda *args: seen.update(args=args))
    assert main(["app", "--threads", "3", "--device", "cpu", "--port", "8600"]) == 0
    address, port, app_args = seen["args"]
    assert (address, port) == ("127.0.0.1", 8600)
    options = app_options(app_args, {})  # what the page reads after `--`
    assert (options.threads, options.device) == (3, "cpu")
    seen.clear()
    assert main(["app", "--threads", "0"]) == 2 and not seen  # refused before serving

"""Replay verdicts for every kind of difference, through the Python API and `workbench replay`.

One saved session holds two generated frames, a reply and a thought; each test edits a copy
of it in one way (a pixel off by exactly one level, a reply text, a thought text, a frame
of another size, a frame file removed) and checks what replay says: the report's fields,
the verdict line the command prints and its exit code.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.cli.main import main
from workbench.params import GenerationParams
from workbench.session import Session
from workbench.store import replay, save
from workbench.store.session_format import SessionFileError

FAST = GenerationParams(num_timesteps=3, height=32, width=32, max_think_tokens=4, seed=4)
REPORT = "replay_report.json"


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory) -> Path:
    s = Session(pipe)
    s.add_text("a cat on a roof")
    s.generate_image(FAST)
    s.ask("what colour is it?", FAST)
    s.think_then_generate("the same cat at night", FAST)
    kinds = [(t.role, t.kind) for t in s.turns]
    assert kinds == [
        *(("user", "text"), ("model", "image"), ("user", "text"), ("model", "text")),
        *(("user", "text"), ("user", "text"), ("model", "thinking"), ("model", "image")),
    ]
    return save(s, tmp_path_factory.mktemp("saved") / "s")


def _turn_index(folder: Path, role: str, kind: str, nth: int = 0) -> int:
    turns = json.loads((folder / "session.json").read_text())["turns"]
    return [i for i, t in enumerate(turns) if (t["role"], t["kind"]) == (role, kind)][nth]


def _frame_file(folder: Path, nth: int) -> Path:
    """The saved file of the nth generated frame (from 0)."""
    turns = json.loads((folder / "session.json").read_text())["turns"]
    return folder / turns[_turn_index(folder, "model", "image", nth)]["image"]


def off_by_one(folder: Path) -> None:
    """One channel of one pixel of the second frame moved by exactly one level."""
    path = _frame_file(folder, 1)
    pixels = np.asarray(Image.open(path).convert("RGB")).copy()
    value = int(pixels[5, 7, 1])
    pixels[5, 7, 1] = value + 1 if value < 255 else value - 1
    Image.fromarray(pixels).save(path)


def _edit_text(folder: Path, kind: str) -> None:
    path = folder / "session.json"
    manifest = json.loads(path.read_text())
    turn = manifest["turns"][_turn_index(folder, "model", kind)]
    turn["text"] = turn["text"] + " (edited)"
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False))


def changed_reply(folder: Path) -> None:
    _edit_text(folder, "text")


def changed_thought(folder: Path) -> None:
    _edit_text(folder, "thinking")


def other_size(folder: Path) -> None:
    """The first frame replaced by itself cropped to 32x16 (its other pixels the same)."""
    path = _frame_file(folder, 0)
    Image.open(path).convert("RGB").crop((0, 0, 32, 16)).save(path)


def missing_frame(folder: Path) -> None:
    _frame_file(folder, 0).unlink()


def _copy(saved: Path, tmp_path: Path, edit=None) -> Path:
    folder = Path(shutil.copytree(saved, tmp_path / "copy"))
    (folder / REPORT).unlink(missing_ok=True)
    if edit is not None:
        edit(folder)
    return folder


# -- the Python API ---------------------------------------------------------------------


def test_the_unedited_copy_replays_identically(pipe, saved, tmp_path):
    report = replay(_copy(saved, tmp_path), pipe)
    assert report.identical and report.frames_differing == [] and report.texts_differing == []
    assert len(report.frames) == 2 and len(report.texts_equal) == 2  # the reply, the thought


def test_one_pixel_off_by_one_level_is_a_difference(pipe, saved, tmp_path):
    folder = _copy(saved, tmp_path, off_by_one)
    report = replay(folder, pipe)
    data = json.loads((folder / REPORT).read_text())
    assert report.identical is False and data["identical"] is False
    assert report.frames_differing == [2] and data["frames_differing"] == 1
    assert [f["max_abs_diff"] for f in data["frames"]] == [0, 1]
    assert data["worst"]["frame"] == 2 and data["worst"]["max_abs_diff"] == 1
    assert data["texts_differing"] == 0


@pytest.mark.parametrize("edit, kind", [(changed_reply, "text"), (changed_thought, "thinking")])
def test_a_changed_reply_or_thought_is_a_difference(pipe, saved, tmp_path, edit, kind):
    folder = _copy(saved, tmp_path, edit)
    report = replay(folder, pipe)
    data = json.loads((folder / REPORT).read_text())
    turn = _turn_index(folder, "model", kind)
    assert report.identical is False and data["identical"] is False
    assert report.texts_differing == [turn] and data["texts_differing"] == 1
    assert {t["turn"]: t["equal"] for t in data["texts"]}[turn] is False
    assert data["frames_differing"] == 0  # the replayed text, not the edited one, goes on


def test_a_frame_of_another_size_is_a_difference(pipe, saved, tmp_path):
    folder = _copy(saved, tmp_path, other_size)
    report = replay(folder, pipe)
    data = json.loads((folder / REPORT).read_text())
    assert report.identical is False and data["identical"] is False
    assert report.frames_differing == [1] and data["frames_differing"] == 1
    assert data["frames"][0]["max_abs_diff"] > 0 and data["frames"][1]["max_abs_diff"] == 0


def test_a_missing_frame_is_refused_naming_the_file(pipe, saved, tmp_path):
    folder = _copy(saved, tmp_path)
    name = _frame_file(folder, 0).relative_to(folder).as_posix()
    missing_frame(folder)
    with pytest.raises(SessionFileError, match=rf"image '{re.escape(name)}' is missing"):
        replay(folder, pipe)
    assert not (folder / REPORT).exists()  # no verdict at all, certainly not "identical"


# -- the command: the verdict line and the exit code of each case ------------------------

CASES = {
    "unedited": (None, 0, r"^replay: identical \(replayed 2 frame\(s\) and 2 text\(s\) in "),
    "off by one": (
        off_by_one,
        1,
        r"^replay: different: 1 frame\(s\) and 0 text\(s\) differ \(.*\); "
        r"worst: frame 2 \(turn 7\), max abs diff 1/255$",
    ),
    "reply": (changed_reply, 1, r"^replay: different: 0 frame\(s\) and 1 text\(s\) differ \("),
    "thought": (changed_thought, 1, r"^replay: different: 0 frame\(s\) and 1 text\(s\) differ \("),
    "size": (
        other_size,
        1,
        r"^replay: different: 1 frame\(s\) and 0 text\(s\) differ \(.*\); worst: frame 1 \(turn 1\)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_command_prints_the_verdict_and_exits_with_its_code(
    case, saved, tiny_dir, tmp_path, capsys
):
    edit, code, verdict = CASES[case]
    folder = _copy(saved, tmp_path, edit)
    assert main(["replay", str(folder), "--model", str(tiny_dir)]) == code
    lines = capsys.readouterr().out.splitlines()
    printed = [line for line in lines if line.startswith("replay: ")]
    assert len(printed) == 1 and re.search(verdict, printed[0]), lines
    assert lines[-1] == f"report: {folder / REPORT}"
    assert json.loads((folder / REPORT).read_text())["identical"] is (code == 0)


def test_the_command_refuses_a_session_with_a_missing_frame(saved, tiny_dir, tmp_path, capsys):
    folder = _copy(saved, tmp_path, missing_frame)
    assert main(["replay", str(folder), "--model", str(tiny_dir)]) == 2
    out, err = capsys.readouterr()
    assert "identical" not in out and not (folder / REPORT).exists()
    assert err.startswith("error: ") and "is missing" in err and err.count("\n") == 1
    assert "Traceback" not in err

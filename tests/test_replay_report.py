"""replay_report.json as standard JSON with a verdict; progress callbacks that cancel the
store's load and replay and the model's text decoding within one step or token."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from workbench.params import GenerationParams
from workbench.session import Session
from workbench.store import load, replay, save
from workbench.store.replay_report import FrameDiff, ReplayReport

FAST = GenerationParams(num_timesteps=3, height=32, width=32, max_think_tokens=3, seed=4)


class Stop(Exception):
    pass


def _strict(text: str) -> dict:
    """json.loads refusing NaN and Infinity, as other languages' parsers do."""

    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    s = Session(pipe)
    s.add_text("a cat on a roof")
    s.generate_image(FAST)
    s.add_text("then at night")
    s.generate_image(FAST)
    s.ask("what colour is it?", FAST)
    return save(s, tmp_path_factory.mktemp("saved") / "s")


def test_an_identical_replay_writes_standard_json_with_the_verdict(pipe, saved):
    report = replay(saved, pipe)
    data = _strict((saved / "replay_report.json").read_text())
    assert data["identical"] is True and report.identical
    assert (data["frames_compared"], data["frames_differing"]) == (2, 0)
    assert (data["texts_compared"], data["texts_differing"]) == (1, 0)
    assert [f["frame"] for f in data["frames"]] == [1, 2]
    assert data["frames"][0]["psnr"] is None and "infinite" in data["frames"][0]["psnr_note"]
    assert data["worst"]["max_abs_diff"] == 0
    assert report.verdict().startswith("identical (replayed 2 frame(s) and 1 text(s)")


def test_a_changed_frame_is_counted_and_named_the_worst(pipe, saved, tmp_path):
    copy = shutil.copytree(saved, tmp_path / "copy")
    second = sorted((copy / "images").glob("0003-*.png"))[0]  # the second generated frame
    pixels = np.asarray(Image.open(second)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(second)
    report = replay(copy, pipe)
    data = _strict((copy / "replay_report.json").read_text())
    assert data["identical"] is False and data["frames_differing"] == 1
    assert data["worst"]["frame"] == 2 and data["worst"]["max_abs_diff"] > 0
    assert isinstance(data["worst"]["psnr"], float)
    assert "different: 1 frame(s) and 0 text(s) differ" in report.verdict()
    assert "worst: frame 2 (turn 3)" in report.verdict()


def test_nan_and_infinity_never_reach_the_file():
    report = ReplayReport([FrameDiff(0, 0, float("inf")), FrameDiff(1, 3, float("nan"))], [], 1.0)
    data = _strict(report.to_json())
    assert [f["psnr"] for f in data["frames"]] == [None, None]
    assert data["worst"]["frame"] == 2


def test_replay_reports_per_turn_and_stops_within_one_step(pipe, saved, tmp_path):
    copy = shutil.copytree(saved, tmp_path / "copy")
    (copy / "replay_report.json").unlink(missing_ok=True)
    calls = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        if len(calls) == 2:  # the first denoising step of the first frame
            raise Stop

    with pytest.raises(Stop):
        replay(copy, pipe, progress=progress)
    assert calls == [(1, 6), (1, 6)]  # turn 1 done, then a step of turn 2
    assert not (copy / "replay_report.json").exists()
    seen = []
    replay(copy, pipe, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (6, 6) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_load_reports_every_turn_and_a_raise_stops_it(pipe, saved):
    seen = []
    load(saved, pipe, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(k, 6) for k in range(1, 7)]

    def stop(done, total):
        raise Stop

    with pytest.raises(Stop):
        load(saved, pipe, progress=stop)


def test_text_decoding_stops_at_the_token_a_cancel_arrives(pipe):
    s = Session(pipe)
    s.add_text("hello")
    before = (len(s.turns), s.main.length, s.main.rope)
    tokens = []

    def stop_after_first(done, total):
        tokens.append((done, total))
        raise Stop

    with pytest.raises(Stop):
        s.ask("what is it?", GenerationParams(max_think_tokens=50), progress=stop_after_first)
    assert len(tokens) == 1 and tokens[0][1] == 50
    assert (len(s.turns), s.main.length, s.main.rope) == before

"""Save, load and replay: continue after load == continue in memory; replay is identical."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.params import ContextLimit, GenerationParams
from workbench.session import Session
from workbench.store import SessionFileError, load, replay, save

FAST = GenerationParams(num_timesteps=3, height=32, width=32, max_think_tokens=3, seed=4)


def picture(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    s = Session(pipe)
    s.add_image(picture(), seed=2)
    s.add_text("a cat on a roof")
    s.generate_image(FAST)
    s.ask("what colour is it?", FAST)
    folder = save(s, tmp_path_factory.mktemp("saved") / "s1")
    return s, folder


def marks(s):
    return s.main.length, s.main.rope, s.image_dropped.length, s.text_mark


@pytest.fixture(scope="module")
def saved_with_drops(pipe, tmp_path_factory):
    # 32x32 images are 6 + 6 rows; the budget makes the generated image and the last
    # text drop the oldest ViT rows first
    s = Session(pipe, limit=ContextLimit(max_tokens=30, policy="drop_vit"))
    s.add_image(picture(), seed=2)
    s.add_text("a cat on a roof")
    s.generate_image(FAST)
    s.add_text("in the rain")
    folder = save(s, tmp_path_factory.mktemp("saved") / "drops")
    return s, folder


def test_load_then_continue_equals_continuing_in_memory(pipe, saved):
    original, folder = saved
    loaded = load(folder, pipe)
    assert marks(loaded) == marks(original)
    assert [(t.role, t.kind, t.text) for t in loaded.turns] == [
        (t.role, t.kind, t.text) for t in original.turns
    ]
    a = original.fork().generate_image(FAST)
    b = loaded.generate_image(FAST)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_replay_is_identical_on_the_same_device(pipe, saved):
    _, folder = saved
    report = replay(folder, pipe)
    assert report.identical and len(report.frames) == 1 and report.frames[0].psnr == float("inf")
    assert report.texts_equal == [(4, True)]
    assert json.loads((folder / "replay_report.json").read_text())["frames"][0]["max_abs_diff"] == 0


def test_load_reapplies_the_drops(pipe, saved_with_drops):
    original, folder = saved_with_drops
    manifest = json.loads((folder / "session.json").read_text())
    assert manifest["version"] == 2 and manifest["context_limit"]["policy"] == "drop_vit"
    drops = [t for t in manifest["turns"] if t["kind"] == "drop"]
    assert [d["dropped"] for d in drops] == [[[0, "vit"]], [[3, "vit"]]]
    loaded = load(folder, pipe)
    assert marks(loaded) == marks(original) and loaded.limit == original.limit
    assert [(t.role, t.kind, t.dropped) for t in loaded.turns] == [
        (t.role, t.kind, t.dropped) for t in original.turns
    ]
    # no ViT rows are left to drop, so continue without the budget on both sides
    branch, loaded.limit = original.fork(), ContextLimit()
    branch.limit = ContextLimit()
    a, b = branch.generate_image(FAST), loaded.generate_image(FAST)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    loaded.rewind(len(loaded.turns) - 2)  # across both drops: back to image + text
    fresh = Session(pipe)
    fresh.add_image(picture(), seed=2)
    fresh.add_text("a cat on a roof")
    assert marks(loaded) == marks(fresh)
    assert torch.equal(*(torch.cat([k for k, _ in s.main.chunks(1)], 1) for s in (loaded, fresh)))


def test_replay_with_drops_is_identical(pipe, saved_with_drops):
    report = replay(saved_with_drops[1], pipe)
    assert report.identical and len(report.frames) == 1


def test_a_session_without_drops_stays_version_1(saved):
    assert json.loads((saved[1] / "session.json").read_text())["version"] == 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["turns"][2].update(dropped=[[1, "vit"]]), r"turns\[2\].dropped: cannot drop"),
        (lambda m: m["turns"][2].update(dropped=[[0, "pixels"]]), r"turns\[2\].dropped must be"),
        (lambda m: m.update(context_limit={"policy": "lru"}), "context_limit: policy"),
    ],
)
def test_bad_drops_and_limits(pipe, saved_with_drops, tmp_path, edit, message):
    copy = shutil.copytree(saved_with_drops[1], tmp_path / "bad")
    manifest = json.loads((copy / "session.json").read_text())
    edit(manifest)
    (copy / "session.json").write_text(json.dumps(manifest))
    with pytest.raises(SessionFileError, match=message):
        load(copy, pipe)


def test_replay_reports_a_changed_frame(pipe, saved, tmp_path):
    _, folder = saved
    copy = shutil.copytree(folder, tmp_path / "copy")
    frame = copy / "images" / "0002.png"
    pixels = np.asarray(Image.open(frame)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(frame)
    report = replay(copy, pipe)
    assert not report.identical and report.frames[0].max_abs_diff > 0
    assert report.frames[0].psnr < float("inf")


def test_saving_after_every_turn_keeps_every_finished_turn(pipe, tmp_path):
    s = Session(pipe)
    folder = tmp_path / "live"
    s.add_text("one")
    save(s, folder)
    s.add_text("two")
    save(s, folder)
    s.add_text("three")  # the process "dies" before this save
    loaded = load(folder, pipe)
    assert [t.text for t in loaded.turns] == ["one", "two"]
    assert not [p for p in folder.rglob(".*") if p.is_file()]  # no temporary files left


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(version=99), "newer than this package reads"),
        (lambda m: m.update(checkpoint="0" * 64), "saved with checkpoint"),
        (lambda m: m["turns"][0].update(image="../../etc/passwd"), "escapes the session directory"),
        (lambda m: m["turns"][0].update(image="images/none.png"), "is missing"),
        (lambda m: m["turns"][1].update(role="robot"), r"turns\[1\]: role/kind"),
        (lambda m: m["turns"][2]["params"].update(num_timesteps=-1), r"turns\[2\].params"),
        (lambda m: m.update(turns="many"), "'turns' must be a list"),
    ],
)
def test_bad_session_directories(pipe, saved, tmp_path, edit, message):
    _, folder = saved
    copy = shutil.copytree(folder, tmp_path / "bad")
    manifest = json.loads((copy / "session.json").read_text())
    edit(manifest)
    (copy / "session.json").write_text(json.dumps(manifest))
    with pytest.raises(SessionFileError, match=message):
        load(copy, pipe)


def test_truncated_manifest_and_override(pipe, saved, tmp_path):
    _, folder = saved
    copy = shutil.copytree(folder, tmp_path / "cut")
    (copy / "session.json").write_text((folder / "session.json").read_text()[:50])
    with pytest.raises(SessionFileError, match="not valid JSON"):
        load(copy, pipe)
    other = shutil.copytree(folder, tmp_path / "other")
    manifest = json.loads((other / "session.json").read_text())
    manifest["checkpoint"] = "f" * 64
    (other / "session.json").write_text(json.dumps(manifest))
    assert len(load(other, pipe, allow_other_checkpoint=True).turns) == 5
    with pytest.raises(SessionFileError, match="no saved session"):
        load(tmp_path / "nothing", pipe)

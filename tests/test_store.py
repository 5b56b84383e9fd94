"""Save, load and replay: continue after load == continue in memory; replay is identical."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from bagel import contexts
from bagel.errors import InputError
from bagel.kv import KVContext, KVLayout
from workbench.metrics import psnr
from workbench.params import ContextLimit, GenerationParams
from workbench.session import Session
from workbench.store import load, replay, save
from workbench.store.session_format import SessionFileError
from workbench.transcript import image_rows

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


def test_each_turn_replays_and_loads_on_the_cpu_threads_it_was_made_with(pipe, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        s = Session(pipe)
        s.add_text("a cat on a roof")
        s.generate_image(FAST)
        folder = save(s, tmp_path / "one-thread")
    finally:
        torch.set_num_threads(threads)
    manifest = json.loads((folder / "session.json").read_text())
    assert [t["threads"] for t in manifest["turns"]] == [1, 1]
    torch.set_num_threads(2)  # another machine's or process's count (the app's, the CLI's)
    try:
        seen: list[int] = []
        report = replay(folder, pipe, progress=lambda *_: seen.append(torch.get_num_threads()))
        # the image turn's denoising steps ran on its one thread (between turns: two)
        assert report.identical and seen.count(1) >= FAST.num_timesteps - 1
        assert torch.get_num_threads() == 2  # and back afterwards
        loaded = load(folder, pipe, progress=lambda *_: seen.append(torch.get_num_threads()))
        assert [t.threads for t in loaded.turns] == [1, 1] and torch.get_num_threads() == 2
        assert marks(loaded) == marks(s)
        # a turn made now records this count
        loaded.add_text("in the rain")
        assert loaded.turns[-1].threads == 2
    finally:
        torch.set_num_threads(threads)
    for bad in (0, 1025, 1.5, "2", True):
        manifest["turns"][0]["threads"] = bad
        (folder / "session.json").write_text(json.dumps(manifest))
        with pytest.raises(SessionFileError, match=r"turns\[0\]\.threads must be a whole number"):
            load(folder, pipe)


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
    frame = next((copy / "images").glob("0002-*.png"))
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


# -- K/V snapshot ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def snapped(saved, tmp_path_factory):
    original, _ = saved
    branch = original.fork()  # its contexts span two blocks: the shared past and its own
    branch.add_text("then it rains")
    return save(branch, tmp_path_factory.mktemp("snap") / "s1", snapshot=True)


def next_logits(pipe, s):
    return pipe.generate_text(s.main, max_new_tokens=1, output_scores=True).scores


def next_latent(pipe, s):
    text = s.main.prefix(s.text_mark.length, s.text_mark.rope)
    return pipe.generate_image(
        s.main,
        32,
        32,
        FAST.sampler(),
        cfg_text_ctx=text,
        cfg_img_ctx=s.image_dropped,
        generator=FAST.generator(),
    ).latent


def test_snapshot_resume_equals_re_encoding(pipe, snapped, monkeypatch):
    manifest = json.loads((snapped / "session.json").read_text())
    assert manifest["snapshot"]["file"] == "kv.safetensors"
    assert (
        manifest["snapshot"]["sha256"] == hashlib.sha256(kv_path(snapped).read_bytes()).hexdigest()
    )
    encoded = load(snapped, pipe, use_snapshot=False)
    with monkeypatch.context() as m:  # the resume encodes nothing
        m.setattr(contexts, "prefill", lambda *a, **k: pytest.fail("re-encoded a turn"))
        resumed = load(snapped, pipe)
    assert marks(resumed) == marks(encoded)
    assert [t.before for t in resumed.turns] == [t.before for t in encoded.turns]
    assert [(t.role, t.kind, t.text, t.seed) for t in resumed.turns] == [
        (t.role, t.kind, t.text, t.seed) for t in encoded.turns
    ]
    assert torch.equal(next_logits(pipe, resumed), next_logits(pipe, encoded))
    assert torch.equal(next_latent(pipe, resumed), next_latent(pipe, encoded))
    for s in (resumed, encoded):  # both keep growing, and undo still works
        s.add_text("and then?")
    assert torch.equal(next_logits(pipe, resumed), next_logits(pipe, encoded))
    resumed.rewind(3)
    encoded.rewind(3)
    assert marks(resumed) == marks(encoded)
    assert torch.equal(next_latent(pipe, resumed), next_latent(pipe, encoded))


def test_saving_without_snapshot_removes_it(pipe, snapped, tmp_path):
    copy = shutil.copytree(snapped, tmp_path / "copy")
    session = load(copy, pipe)
    save(session, copy)
    assert "snapshot" not in json.loads((copy / "session.json").read_text())
    assert not kv_path(copy).exists()
    save(session, copy, snapshot=True)
    (meta, tensors), (meta0, tensors0) = read_snapshot(copy), read_snapshot(snapped)
    assert meta == meta0 and tensors.keys() == tensors0.keys()
    assert all(torch.equal(tensors[name], tensors0[name]) for name in tensors)


def kv_path(folder):
    return folder / "kv.safetensors"


def read_snapshot(folder):
    with safe_open(str(kv_path(folder)), framework="pt") as f:
        return f.metadata(), {name: f.get_tensor(name) for name in f.keys()}


def rewrite_snapshot(folder, edit):
    """Apply edit(metadata, tensors) to the snapshot and record its new sha256."""
    meta, tensors = read_snapshot(folder)
    edit(meta, tensors)
    save_file(tensors, str(kv_path(folder)), meta)
    record_sha(folder)


def record_sha(folder):
    manifest = json.loads((folder / "session.json").read_text())
    manifest["snapshot"]["sha256"] = hashlib.sha256(kv_path(folder).read_bytes()).hexdigest()
    (folder / "session.json").write_text(json.dumps(manifest))


def flip_a_byte(folder):
    data = bytearray(kv_path(folder).read_bytes())
    data[-3] ^= 1
    kv_path(folder).write_bytes(bytes(data))


def cut_short(folder):
    kv_path(folder).write_bytes(kv_path(folder).read_bytes()[:-100])


def edit_turns(folder):
    manifest = json.loads((folder / "session.json").read_text())
    manifest["turns"][1]["text"] = "a dog on a roof"
    (folder / "session.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (flip_a_byte, "sha256 differs"),
        (cut_short, "sha256 differs"),
        (lambda d: (cut_short(d), record_sha(d)), "not a readable safetensors file"),
        (lambda d: kv_path(d).unlink(), "kv.safetensors is missing"),
        (edit_turns, "transcript digest differs"),
        (lambda d: rewrite_snapshot(d, lambda m, t: m.update(checkpoint="0" * 64)), "made with"),
        (lambda d: rewrite_snapshot(d, lambda m, t: m.update(dtype="bfloat16")), "stored in"),
        (lambda d: rewrite_snapshot(d, lambda m, t: m.update(format="x")), "not a bagel-workbench"),
        (lambda d: rewrite_snapshot(d, lambda m, t: t.pop("v.main.1")), r"missing \['v.main.1'\]"),
        (
            lambda d: rewrite_snapshot(
                d, lambda m, t: t.update({"k.main.0": t["k.main.0"][:, 1:].contiguous()})
            ),
            "tensor k.main.0 has shape",
        ),
        (
            lambda d: rewrite_snapshot(
                d, lambda m, t: t.update({"v.main.0": t["v.main.0"].half()})
            ),
            "context main: v.0.: expected",
        ),
        (lambda d: rewrite_snapshot(d, lambda m, t: m.update(marks="[[1]]")), "malformed"),
        (
            lambda d: rewrite_snapshot(d, lambda m, t: m.update(contexts='{"main": [1, 2]}')),
            "malformed",
        ),
        (lambda d: rewrite_snapshot(d, lambda m, t: m.update(marks="[]")), "marks for 0 turns"),
        (
            lambda d: rewrite_snapshot(
                d,
                lambda m, t: m.update(
                    marks=m["marks"].replace("[0, 0, 0, 0, 0, 0]", "[0, 0, 0, 0, 99, 0]")
                ),
            ),
            "turn 0's image-dropped mark",
        ),
    ],
)
def test_bad_snapshots_are_named_and_nothing_changes(pipe, snapped, tmp_path, tamper, message):
    copy = shutil.copytree(snapped, tmp_path / "bad")
    tamper(copy)
    files = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    with pytest.raises(SessionFileError, match=message):
        load(copy, pipe)
    assert files == {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}


def test_overrides_re_encode_the_turns(pipe, snapped, tmp_path):
    encoded = load(snapped, pipe, use_snapshot=False)
    corrupt = shutil.copytree(snapped, tmp_path / "corrupt")
    flip_a_byte(corrupt)
    resumed = load(corrupt, pipe, use_snapshot=False)
    assert marks(resumed) == marks(encoded)
    assert torch.equal(next_logits(pipe, resumed), next_logits(pipe, encoded))
    other = shutil.copytree(snapped, tmp_path / "other")  # a session of another checkpoint:
    manifest = json.loads((other / "session.json").read_text())
    (other / "session.json").write_text(json.dumps({**manifest, "checkpoint": "f" * 64}))
    flip_a_byte(other)  # its snapshot is not even read
    with pytest.raises(SessionFileError, match="saved with checkpoint"):
        load(other, pipe)
    resumed = load(other, pipe, allow_other_checkpoint=True)
    assert torch.equal(next_logits(pipe, resumed), next_logits(pipe, encoded))
    stranger = shutil.copytree(snapped, tmp_path / "stranger")  # only the snapshot's differs
    rewrite_snapshot(stranger, lambda m, t: m.update(checkpoint="f" * 64))
    resumed = load(stranger, pipe, allow_other_checkpoint=True)
    assert torch.equal(next_logits(pipe, resumed), next_logits(pipe, encoded))


def test_from_tensors_owns_its_block():
    layout = KVLayout(2, 1, 4, torch.float32, (torch.device("cpu"),) * 2)
    ks = [torch.randn(1, 3, 4) for _ in range(2)]
    vs = [torch.randn(1, 3, 4) for _ in range(2)]
    ctx = KVContext.from_tensors(layout, ks, vs, rope=2)
    assert ctx.length == 3 and ctx.rope == 2
    ctx.reserve(1)
    for layer in range(2):
        ctx.write(layer, torch.zeros(1, 1, 4), torch.ones(1, 1, 4))
    ctx.commit(1)
    k, v = (torch.cat(t, dim=1) for t in zip(*ctx.chunks(1), strict=True))
    assert torch.equal(k, torch.cat([ks[1], torch.zeros(1, 1, 4)], dim=1)) and ctx.rope == 3
    assert torch.equal(v[:, :3], vs[1])
    with pytest.raises(ValueError, match=r"k\[1\]: expected \[1, 3, 4\]"):
        KVContext.from_tensors(layout, [ks[0], ks[1][:, :2]], vs, rope=2)


def test_snapshot_of_a_session_with_drops_keeps_its_image_rows_and_limit(
    pipe, saved_with_drops, tmp_path
):
    original, _ = saved_with_drops
    folder = save(original, tmp_path / "snap", snapshot=True)
    resumed = load(folder, pipe)
    assert resumed.limit == original.limit
    assert image_rows(resumed.turns) == image_rows(original.turns)  # the policies see the images
    assert [t.rows for t in resumed.turns] == [t.rows for t in original.turns]
    # one block vs the original's spans around the dropped rows: the same tokens, so the
    # same numbers (attention reads the cache as one buffer whatever its blocks)
    assert torch.equal(next_logits(pipe, resumed), next_logits(pipe, original))
    with pytest.raises(InputError, match="across a drop"):
        resumed.rewind(len(resumed.turns) - 2)  # the dropped rows are not in the snapshot
    assert marks(resumed) == marks(original)


def test_saved_generated_frames_carry_their_consistency_metrics(pipe, tmp_path):
    s = Session(pipe)
    s.add_image(picture(), seed=2)
    first, second = s.generate_image(FAST), s.generate_image(dataclasses.replace(FAST, seed=5))
    entries = json.loads((save(s, tmp_path / "m") / "session.json").read_text())["turns"]
    assert "metrics" not in entries[0]  # an input image: not a produced frame
    m1, m2 = entries[1]["metrics"], entries[2]["metrics"]
    assert m1 == {"psnr_prev": None, "ssim_prev": None, "drift": pytest.approx(1.0)}
    assert m2["psnr_prev"] == pytest.approx(psnr(first, second))
    assert m2["drift"] < 1.0 and -1.0 <= m2["drift"]
    assert load(tmp_path / "m", pipe).turns[2].kind == "image"  # and it still loads


def test_saving_again_after_a_rewind_writes_the_redone_images(pipe, tmp_path):
    s = Session(pipe)
    s.add_text("a lighthouse")
    s.generate_image(FAST)
    folder = save(s, tmp_path / "redo")
    s.rewind(1)
    s.generate_image(dataclasses.replace(FAST, seed=9))  # the same turn index, a new image
    save(s, folder)
    assert len(list((folder / "images").glob("*.png"))) == 1  # the stale file is gone
    assert replay(folder, pipe).identical

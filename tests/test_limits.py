"""Every numeric limit that guards input, at its boundary: the value at the limit is
accepted, one past it is refused (a `>` turned into `>=`, or the reverse, fails here).

Limits whose real value is too costly to reach in a test are lowered with monkeypatch;
each such test says so. The scenario reader's limits (workbench/scenario/read.py) and the
server's request size are tested with those modules (tests/test_scenario.py,
tests/test_serve.py).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

import bagel.image as bimage
from bagel import safejson
from bagel.errors import ImageError, InputError
from bagel.flow import MAX_TIMESTEPS, SamplerParams
from bagel.image import open_image
from workbench.app import files
from workbench.app.files import MB, UploadError, read_image, unpack_session
from workbench.params import MAX_SEED, MAX_SIDE, MAX_THINK_TOKENS, ContextLimit, GenerationParams
from workbench.session import Session
from workbench.store import save, session_format
from workbench.store.session_format import SessionFileError, read_manifest


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()


# -- images ---------------------------------------------------------------------------------


def test_pixel_limit(monkeypatch):
    """MAX_INPUT_PIXELS lowered to 5000: decoding an image at the real limit (64 Mi pixels)
    would take 192 MiB and seconds. The same check guards bytes, paths and PIL images."""
    monkeypatch.setattr(bimage, "MAX_INPUT_PIXELS", 5000)
    assert open_image(png(100, 50)).size == (100, 50)  # 5000 pixels
    assert open_image(Image.new("RGB", (50, 100))).size == (50, 100)
    for one_past in (png(5001, 1), png(1667, 3), Image.new("RGB", (1, 5001))):
        with pytest.raises(ImageError, match=r"too many pixels \(.* = 5001\); the limit is 5000"):
            open_image(one_past)


@pytest.mark.parametrize("which", ["vae_rule", "vit_rule"])
def test_aspect_ratio_limit(pipe, which):
    """An image max_side x stride has exactly the largest ratio a resize rule takes;
    one pixel longer is refused (both orientations; the VAE rule through prepare_image,
    which every image entering a session goes through)."""
    rule = getattr(pipe, which)
    at_limit, past = (rule.max_side, rule.stride), (rule.max_side + 1, rule.stride)
    for width, height in (at_limit, at_limit[::-1]):
        rule.check(width, height)
        if which == "vae_rule":
            assert pipe.prepare_image(Image.new("RGB", (width, height))).size
    for width, height in (past, past[::-1]):
        with pytest.raises(ImageError, match="aspect ratio"):
            rule.check(width, height)
        if which == "vae_rule":
            with pytest.raises(ImageError, match="aspect ratio"):
                pipe.prepare_image(Image.new("RGB", (width, height)))


def test_uploaded_image_size_limit(pipe):
    """An upload of exactly MAX_IMAGE_MB (a small PNG and bytes after its end, which a PNG
    reader ignores) is read; one byte more is refused before decoding."""
    limit = files.MAX_IMAGE_MB * MB
    data = png(64, 64)
    data += b"\0" * (limit - len(data))
    assert read_image("at-limit.png", data, pipe).size == (64, 64)
    with pytest.raises(UploadError, match=rf"over the {files.MAX_IMAGE_MB} MB limit"):
        read_image("past.png", data + b"\0", pipe)


def test_generated_image_side_limit(pipe):
    step, top = pipe.config.latent_downsample, pipe.config.vae_max_side
    assert pipe.check_image_size(top, top) == (top // step, top // step)
    assert pipe.check_image_size(step, step) == (1, 1)
    for height, width in ((top + step, top), (top, top + step), (0, step), (step, top + 1)):
        with pytest.raises(InputError, match=f"multiple of {step} between {step} and {top}"):
            pipe.check_image_size(height, width)


# -- parameters -----------------------------------------------------------------------------


def test_parameter_limits():
    assert GenerationParams(max_think_tokens=MAX_THINK_TOKENS).max_think_tokens == MAX_THINK_TOKENS
    with pytest.raises(InputError, match="max_think_tokens must be an integer between 1 and"):
        GenerationParams(max_think_tokens=MAX_THINK_TOKENS + 1)
    assert GenerationParams(seed=MAX_SEED).seed == MAX_SEED
    with pytest.raises(InputError, match="seed must be an integer between 0 and 2"):
        GenerationParams(seed=MAX_SEED + 1)
    assert GenerationParams(height=MAX_SIDE, width=MAX_SIDE).height == MAX_SIDE
    with pytest.raises(InputError, match=f"width must be an integer between 1 and {MAX_SIDE}"):
        GenerationParams(height=MAX_SIDE, width=MAX_SIDE + 1)
    assert SamplerParams(num_timesteps=MAX_TIMESTEPS).num_timesteps == MAX_TIMESTEPS
    with pytest.raises(InputError, match=f"between 2 and {MAX_TIMESTEPS}"):
        SamplerParams(num_timesteps=MAX_TIMESTEPS + 1)


def test_json_depth_limit():
    at_limit = "[" * safejson.MAX_DEPTH + "]" * safejson.MAX_DEPTH
    assert safejson.loads(at_limit) == eval(at_limit)
    with pytest.raises(safejson.JSONLimitError, match="nested more than 64 levels"):
        safejson.loads("[" + at_limit + "]")


# -- positions and token budgets ------------------------------------------------------------


def _fill(pipe, positions: int):
    """A context at rope `positions` (text tokens, appended in chunks)."""
    ctx = pipe.new_context()
    while ctx.rope < positions:
        pipe.append_token_ids(ctx, [7] * min(512, positions - ctx.rope))
    return ctx


def _texts_of(pipe, *counts: int) -> list[str]:
    """User texts whose framed token counts are `counts`."""
    found = {}
    for k in range(1, 200):
        text = " ".join(["cat"] * k)
        found.setdefault(len(pipe.tokenizer.frame(text)), text)
    return [found[n] for n in counts]


def test_position_limit_of_the_model(pipe):
    limit = pipe.config.llm.max_position_embeddings
    ctx = _fill(pipe, limit - 3)
    pipe.append_token_ids(ctx, [7, 7, 7])  # exactly to the limit
    assert ctx.rope == limit
    with pytest.raises(InputError, match=f"does not fit: .* position {limit} .* limit is {limit}"):
        pipe.append_token_ids(ctx, [7])
    short = _fill(pipe, limit - 3)
    with pytest.raises(InputError, match="does not fit"):
        pipe.append_token_ids(short, [7, 7, 7, 7])


def test_position_limit_of_a_session_turn(pipe):
    limit = pipe.config.llm.max_position_embeddings
    at_limit, past = _texts_of(pipe, 6, 7)
    s = Session(pipe, _fill(pipe, limit - 6))
    s.add_text(at_limit)
    assert s.main.rope == limit and len(s.turns) == 1
    s = Session(pipe, _fill(pipe, limit - 6))
    with pytest.raises(InputError, match=f"7 more positions do not fit: .* limit {limit}"):
        s.add_text(past)
    assert s.main.rope == limit - 6 and s.turns == []


def test_token_budget_of_a_session(pipe):
    at_limit, past = _texts_of(pipe, 6, 7)
    s = Session(pipe, limit=ContextLimit(max_tokens=6))
    s.add_text(at_limit)
    assert s.main.length == 6
    s = Session(pipe, limit=ContextLimit(max_tokens=6))
    with pytest.raises(InputError, match="needs 7 tokens and does not fit the session's budget"):
        s.add_text(past)
    assert s.main.length == 0


# -- saved sessions and their archives ------------------------------------------------------


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory) -> Path:
    s = Session(pipe)
    s.add_text("a saved session")
    return save(s, tmp_path_factory.mktemp("limits") / "saved")


def _archive(saved: Path, extra: dict[str, bytes] | None = None) -> bytes:
    """The saved session zipped (stored, not compressed), with `extra` members beside it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(saved.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(saved).as_posix())
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _session_bytes(saved: Path) -> int:
    return sum(p.stat().st_size for p in saved.rglob("*") if p.is_file())


def test_manifest_size_limit(saved, tmp_path, monkeypatch):
    """MAX_MANIFEST_BYTES (64 MiB) lowered to this manifest's size: writing 64 MiB is slow."""
    folder = tmp_path / "copy"
    folder.mkdir()
    text = (saved / "session.json").read_bytes()
    (folder / "session.json").write_bytes(text)
    monkeypatch.setattr(session_format, "MAX_MANIFEST_BYTES", len(text))
    assert read_manifest(folder, None, allow_other_checkpoint=True)["turns"]
    (folder / "session.json").write_bytes(text + b" ")
    with pytest.raises(SessionFileError, match=rf"{len(text) + 1} bytes, more than the"):
        read_manifest(folder, None, allow_other_checkpoint=True)


def test_archive_entry_limit(saved, tmp_path):
    """Exactly MAX_ARCHIVE_FILES entries unpack (the extra ones are skipped); one more is
    refused before anything is written."""
    own = len(zipfile.ZipFile(io.BytesIO(_archive(saved))).infolist())
    pad = {f"notes/{i}.txt": b"" for i in range(files.MAX_ARCHIVE_FILES - own)}
    unpacked = unpack_session("at-limit.zip", _archive(saved, pad), tmp_path / "a")
    assert json.loads((unpacked / "session.json").read_text())["turns"]
    pad["notes/one-more.txt"] = b""
    with pytest.raises(UploadError, match=f"over the limit of {files.MAX_ARCHIVE_FILES}"):
        unpack_session("past.zip", _archive(saved, pad), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_archive_unpacked_size_limit(saved, tmp_path, monkeypatch):
    """MAX_UNPACKED_BYTES (1 GiB) lowered to 4096 bytes past the session's own files: an
    archive claiming exactly that many bytes unpacks, one byte more is refused."""
    limit = _session_bytes(saved) + 4096
    monkeypatch.setattr(files, "MAX_UNPACKED_BYTES", limit)
    at_limit = _archive(saved, {"notes.txt": b"x" * 4096})
    assert (unpack_session("at-limit.zip", at_limit, tmp_path / "a") / "session.json").is_file()
    past = _archive(saved, {"notes.txt": b"x" * 4097})
    with pytest.raises(UploadError, match="unpacks to more than"):
        unpack_session("past.zip", past, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_archive_upload_size_limit(saved, tmp_path, monkeypatch):
    """MAX_ARCHIVE_MB (200) lowered to 1: an archive of exactly 1 MiB (padded with a member
    the unpacking skips) is accepted, one byte more is refused."""
    monkeypatch.setattr(files, "MAX_ARCHIVE_MB", 1)
    overhead = len(_archive(saved, {"pad.bin": b""}))
    at_limit = _archive(saved, {"pad.bin": b"x" * (MB - overhead)})
    assert len(at_limit) == MB
    assert (unpack_session("at-limit.zip", at_limit, tmp_path / "a") / "session.json").is_file()
    past = _archive(saved, {"pad.bin": b"x" * (MB - overhead + 1)})
    with pytest.raises(UploadError, match="MB is over the 1 MB limit"):
        unpack_session("past.zip", past, tmp_path / "b")

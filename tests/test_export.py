"""Exports: PNG frames, GIF, MP4 (read back), contact sheet, story page, whole sessions."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from bagel.errors import InputError
from workbench import export, media
from workbench.export import export_session, session_frames
from workbench.media import (
    ExportError,
    Frame,
    contact_sheet,
    story_page,
    write_contact_sheet,
    write_frames,
    write_gif,
    write_mp4,
)
from workbench.metrics import psnr
from workbench.outputs import MARKER, OutputError
from workbench.params import GenerationParams
from workbench.session import Session
from workbench.store import replay, save

FAST = GenerationParams(num_timesteps=3, height=32, width=32, seed=3)


def noise(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def smooth(shift: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    pixels = np.stack([x * 3 + shift, y * 4, np.full_like(x, 128)], axis=-1)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def read_video(path):
    return iio.imread(path, plugin="FFMPEG"), iio.immeta(path, plugin="FFMPEG")


# -- single writers ---------------------------------------------------------------------


def test_png_frames_are_numbered_and_lossless(tmp_path):
    frames = [noise(i) for i in range(3)]
    paths = write_frames(frames, tmp_path / "out", prefix="shot")
    assert [p.name for p in paths] == ["shot_0001.png", "shot_0002.png", "shot_0003.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in paths]
    for frame, path in zip(frames, paths, strict=True):
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(frame))


def test_gif_has_every_frame_at_the_first_frame_size(tmp_path):
    frames = [noise(0), noise(1), noise(2, (20, 30))]  # the last one is letterboxed
    path = write_gif(frames, tmp_path / "a.gif", fps=5)
    with Image.open(path) as gif:
        assert gif.n_frames == 3 and gif.size == (40, 30)
        assert gif.info["duration"] == 200 and gif.info["loop"] == 0


def test_mp4_reads_back_with_its_frame_count_size_and_codec(tmp_path):
    frames = [smooth(10 * i) for i in range(7)]
    video, meta = read_video(write_mp4(frames, tmp_path / "a.mp4", fps=12))
    assert video.shape == (7, 48, 64, 3)
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert meta["fps"] == 12
    for got, frame in zip(video, frames, strict=True):  # lossy, but close on smooth frames
        assert np.abs(got.astype(int) - np.asarray(frame, dtype=int)).mean() < 4


def test_mp4_pads_odd_sides_to_even_and_letterboxes_other_sizes(tmp_path):
    frames = [smooth(0, (47, 33)), smooth(40, (47, 33)), smooth(80, (20, 33))]
    video, _ = read_video(write_mp4(frames, tmp_path / "odd.mp4", fps=4))
    assert video.shape == (3, 34, 48, 3)
    first = np.asarray(frames[0], dtype=int)
    # the padding repeats the last column / row: no black bar
    assert np.abs(video[0, :33, 47].astype(int) - first[:, 46]).mean() < 6
    assert np.abs(video[0, 33, :47].astype(int) - first[32]).mean() < 6
    # the narrow frame sits in the middle, black on both sides
    assert video[2, :, :8].mean() < 8 and video[2, :, -8:].mean() < 8
    assert video[2, :, 20:28].mean() > 40


def test_writers_refuse_bad_input(tmp_path):
    frames = [noise(0)]
    with pytest.raises(InputError, match="no frames"):
        write_mp4([], tmp_path / "a.mp4")
    with pytest.raises(InputError, match="list of images"):
        write_gif(noise(0), tmp_path / "a.gif")
    with pytest.raises(InputError, match=r"frames\[1\] is a str"):
        write_frames([noise(0), "x.png"], tmp_path / "f")
    for fps in (0, -1, 61, math.nan, True, "4"):
        with pytest.raises(InputError, match="fps must be"):
            write_mp4(frames, tmp_path / "a.mp4", fps=fps)
    with pytest.raises(InputError, match="between 0.1 and 50"):
        write_gif(frames, tmp_path / "a.gif", fps=55)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a folder"):
        write_gif(frames, tmp_path / "file" / "a.gif")
    with pytest.raises(ExportError, match="is a folder"):
        write_mp4(frames, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing half-written


def test_contact_sheet_size_layout_and_captions(tmp_path):
    frames = [Frame(noise(i), f"frame {i}") for i in range(5)]
    sheet = contact_sheet(frames, columns=2, thumb=100)
    gap, cell_w, cell_h = media.SHEET_GAP, 100, 75  # 40x30 scaled to a long side of 100
    caption_h = media.CAPTION_LINES * (media.CAPTION_FONT_SIZE + 3)
    assert sheet.size == (2 * (cell_w + gap) + gap, 3 * (cell_h + caption_h + gap) + gap)
    second = sheet.crop((2 * gap + cell_w, gap, 2 * (gap + cell_w), gap + cell_h))
    expected = noise(1).resize((100, 75), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(second), np.asarray(expected))
    caption = np.asarray(sheet.crop((gap, gap + cell_h, gap + cell_w, gap + cell_h + caption_h)))
    assert (caption < 128).any()  # some dark text pixels under the first frame
    bare = contact_sheet([f.image for f in frames], columns=8, thumb=100)
    assert bare.size == (5 * (cell_w + gap) + gap, cell_h + 2 * gap)  # no caption rows
    path = write_contact_sheet(frames, tmp_path / "sheet.png", columns=2, thumb=100)
    assert Image.open(path).size == sheet.size
    with pytest.raises(InputError, match="columns"):
        contact_sheet(frames, columns=0)


def test_long_captions_wrap_to_three_lines_with_an_ellipsis():
    draw = media.ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = media.ImageFont.load_default(media.CAPTION_FONT_SIZE)
    lines = media._wrap("word " * 200, draw, font, 100)
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert all(draw.textlength(line, font=font) <= 100 for line in lines)
    assert media._wrap("short", draw, font, 100) == ["short"]


def test_story_page_escapes_texts_and_embeds_images(tmp_path):
    frames = [Frame(noise(0), "<script>alert('x')</script> & more"), Frame(noise(1), "line\nbreak")]
    page = story_page(frames, tmp_path / "story.html", title="A <b>tale</b>").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&amp; more" in page and "A &lt;b&gt;tale&lt;/b&gt;" in page
    assert page.count('src="data:image/png;base64,') == 2
    linked = story_page(frames, tmp_path / "s2.html", image_files=["a b.png", 'q".png'])
    assert 'src="a b.png"' in linked.read_text() and 'src="q&quot;.png"' in linked.read_text()


# -- sessions ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def session(pipe):
    s = Session(pipe)
    s.add_image(noise(9, (32, 32)), seed=1)
    s.add_text("a red <cube> & a sphere")
    s.generate_image(FAST)
    s.add_text("turn left")
    s.generate_image(FAST)
    return s


@pytest.fixture(scope="module")
def saved(session, tmp_path_factory):
    return save(session, tmp_path_factory.mktemp("saved") / "session")


def test_session_frames_pick_generated_images_with_their_prompts(session, saved):
    for source in (session, saved):
        picked = session_frames(source)
        assert [p.turn for p in picked] == [2, 4]
        assert [p.frame.caption for p in picked] == ["a red <cube> & a sphere", "turn left"]
        assert [p.frame.image.size for p in picked] == [(32, 32), (32, 32)]
    assert np.array_equal(
        np.asarray(session_frames(saved)[1].frame.image), np.asarray(session.turns[4].image)
    )
    everything = session_frames(saved, include="all")
    assert [p.turn for p in everything] == [0, 2, 4]
    assert everything[0].frame.caption == "input image"


def test_export_of_a_saved_session(pipe, saved, tmp_path):
    out = export_session(saved, tmp_path / "export", pipe=pipe, fps=2)
    names = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert {
        "frames/frame_0001.png",
        "frames/frame_0002.png",
        "frames.gif",
        "frames.mp4",
        "contact_sheet.png",
        "story.html",
        "metrics.json",
        "metrics.csv",
        "session/session.json",
    } <= names
    video, meta = read_video(out / "frames.mp4")
    assert video.shape == (2, 32, 32, 3) and meta["fps"] == 2
    with Image.open(out / "frames.gif") as gif:
        assert gif.n_frames == 2
    story = (out / "story.html").read_text()
    assert "a red &lt;cube&gt; &amp; a sphere" in story and 'src="frames/frame_0002.png"' in story

    rows = json.loads((out / "metrics.json").read_text())["frames"]
    first, second = rows
    assert first["psnr_prev"] is None and first["drift"] == pytest.approx(1.0, abs=1e-6)
    frames = [Image.open(out / r["file"]) for r in rows]
    assert second["psnr_prev"] == pytest.approx(psnr(*frames))
    assert 0 < second["ssim_prev"] < 1 and -1 <= second["drift"] < 1
    with open(out / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["turn"] for r in table] == ["2", "4"] and table[0]["psnr_prev"] == ""

    assert replay(out / "session", pipe).identical  # the exported session replays


def test_export_of_a_live_session_without_drift_and_selected_formats(session, tmp_path):
    out = export_session(session, tmp_path / "live", formats={"png", "sheet"}, pipe=None)
    assert sorted(p.name for p in out.iterdir()) == [
        MARKER,  # what lets a later export replace this folder
        "contact_sheet.png",
        "frames",
        "metrics.csv",
        "metrics.json",
    ]
    rows = json.loads((out / "metrics.json").read_text())["frames"]
    assert rows[0]["drift"] == pytest.approx(1.0, abs=1e-6)  # a live session brings its model
    out = export_session(session, tmp_path / "one", formats="gif", include="all")
    assert Image.open(out / "frames.gif").n_frames == 3


def test_export_refuses_bad_arguments_before_writing(saved, tmp_path, pipe):
    with pytest.raises(InputError, match=r"unknown export format\(s\) \['avi'\]"):
        export_session(saved, tmp_path / "x", formats={"png", "avi"})
    with pytest.raises(InputError, match="no export format"):
        export_session(saved, tmp_path / "x", formats=[])
    with pytest.raises(InputError, match="fps must be"):
        export_session(saved, tmp_path / "x", fps=0)
    with pytest.raises(InputError, match="include"):
        export_session(saved, tmp_path / "x", include="some")
    empty = Session(pipe)
    empty.add_text("nothing drawn yet")
    with pytest.raises(InputError, match="no frames to export"):
        export_session(empty, tmp_path / "x")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        export_session(saved, tmp_path / "a_file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_export_refuses_a_non_empty_out_unless_overwrite(saved, tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    export_session(saved, out, formats={"png"})
    with pytest.raises(OutputError, match="not empty"):
        export_session(saved, out, formats={"gif"})
    assert not (out / "frames.gif").exists()
    export_session(saved, out, formats={"gif"}, overwrite=True)
    names = ["frames.gif", "metrics.csv", "metrics.json"]
    assert sorted(p.name for p in out.iterdir()) == [MARKER, *names]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folders left


def test_a_failure_mid_export_leaves_no_partial_out(saved, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ExportError("disk full")

    monkeypatch.setattr(media, "_encode_h264", broken)  # PNGs and GIF are written by then
    with pytest.raises(ExportError, match="disk full"):
        export_session(saved, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []

    old = export_session(saved, tmp_path / "kept", formats={"png"})
    with pytest.raises(ExportError, match="disk full"):
        export_session(saved, old, overwrite=True)
    assert sorted(p.name for p in old.iterdir()) == [
        MARKER,
        "frames",
        "metrics.csv",
        "metrics.json",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]


def test_docs_example_runs(capsys):
    page = (Path(__file__).resolve().parent.parent / "docs" / "export.md").read_text()
    block = re.findall(r"```python\n(.*?)```", page, re.S)[-1]
    exec(compile(block, "docs/export.md", "exec"), {})
    assert capsys.readouterr().out.startswith("(416, 306) 34.8")


def test_metrics_files_write_an_infinite_psnr_as_inf(tmp_path):
    row = {"frame": 2, "turn": 5, "caption": "same", "psnr_prev": math.inf, "drift": None}
    export._write_metrics([row], tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["frames"][0]["psnr_prev"] == "inf"
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1] == "2,5,same,inf,"

"""Exports of frame sequences: numbered PNGs, GIF, MP4, contact sheet, story page.

A frame is a PIL image with an optional caption (`Frame`); every writer also takes
plain images. Each file is written to a temporary name next to its target and renamed,
so a file appears whole or not at all; `export_session` does the same for a whole
folder.

Frames of different sizes (GIF, MP4, contact sheet): each frame is scaled to fit inside
the first frame's size, keeping its aspect ratio (bicubic), and centred on black.
MP4 (H.264, yuv420p) needs even sides: an odd width or height is padded by repeating
the last column or row, so nothing is cut off and no bar appears.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bagel.errors import BagelError, InputError
from bagel.pipeline import BagelPipeline, ProgressFn
from bagel.tokenizer import GEN_THINK_PROMPT
from workbench import outputs, store
from workbench.files import check_regular_file, write_atomic
from workbench.metrics import FrameMetrics, frame_metrics
from workbench.session import Session
from workbench.store import session_format

log = logging.getLogger(__name__)

FORMATS = frozenset({"png", "gif", "mp4", "sheet", "story", "session"})
FPS_RANGE = (0.1, 60.0)  # MP4; a GIF stops at 50 (its delays are whole 1/100 s)
GIF_MAX_FPS = 50.0
SHEET_GAP = 8  # pixels between and around the contact sheet's cells
CAPTION_LINES = 3
CAPTION_FONT_SIZE = 12
MP4_CRF = 18  # x264 quality: about visually lossless


class ExportError(BagelError):
    """An export cannot be written: a file cannot be made, or the encoder fails. (A
    refused output folder is a workbench.outputs.OutputError.)"""


@dataclass(frozen=True)
class Frame:
    image: Image.Image
    caption: str = ""


FrameLike = Frame | Image.Image


# -- single writers -------------------------------------------------------------------


def write_frames(
    frames: Sequence[FrameLike], folder: str | Path, prefix: str = "frame"
) -> list[Path]:
    """Numbered PNGs `{prefix}_0001.png`, … (at their own sizes) in folder (created)."""
    frames = _as_frames(frames)
    if not prefix or any(c in prefix for c in "/\\\0"):
        raise InputError(f"prefix must be a non-empty file name part, got {prefix!r}")
    folder = Path(folder)
    _make_folder(folder)
    digits = max(4, len(str(len(frames))))
    paths = [folder / f"{prefix}_{i + 1:0{digits}d}.png" for i in range(len(frames))]
    for frame, path in zip(frames, paths, strict=True):
        _write_atomic(path, lambda tmp, im=frame.image: im.save(tmp, "PNG"))
    return paths


def write_gif(frames: Sequence[FrameLike], path: str | Path, fps: float = 4) -> Path:
    """A looping GIF at `fps` (at most 50). The encoder merges identical consecutive
    frames into one longer frame (the animation plays the same)."""
    frames = _as_frames(frames)
    _check_fps(fps, GIF_MAX_FPS)
    images = _common_size([f.image for f in frames])
    duration = max(20, round(1000 / fps / 10) * 10)  # ms, in the format's 1/100 s steps

    def write(tmp: Path) -> None:
        images[0].save(
            tmp, "GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
        )

    return _write_atomic(Path(path), write)


def write_mp4(frames: Sequence[FrameLike], path: str | Path, fps: float = 4) -> Path:
    """An H.264 MP4 (yuv420p, crf 18, one video frame per frame) with the ffmpeg binary
    that imageio-ffmpeg ships."""
    frames = _as_frames(frames)
    _check_fps(fps, FPS_RANGE[1])
    images = [_even(image) for image in _common_size([f.image for f in frames])]
    return _write_atomic(Path(path), lambda tmp: _encode_h264(images, tmp, fps))


def contact_sheet(frames: Sequence[FrameLike], columns: int = 4, thumb: int = 256) -> Image.Image:
    """All frames in a grid, in order, each with its caption (up to three lines) below.

    Every cell is the first frame's size scaled so its long side is `thumb`; the grid has
    min(columns, len(frames)) columns.
    """
    frames = _as_frames(frames)
    if not isinstance(columns, int) or columns < 1:
        raise InputError(f"columns must be a positive integer, got {columns!r}")
    if not isinstance(thumb, int) or not 16 <= thumb <= 2048:
        raise InputError(f"thumb must be an integer between 16 and 2048, got {thumb!r}")
    w, h = frames[0].image.size
    scale = thumb / max(w, h)
    cell = (max(1, round(w * scale)), max(1, round(h * scale)))
    font = ImageFont.load_default(CAPTION_FONT_SIZE)
    line_height = CAPTION_FONT_SIZE + 3
    caption_height = CAPTION_LINES * line_height if any(f.caption for f in frames) else 0
    columns = min(columns, len(frames))
    rows = math.ceil(len(frames) / columns)
    step_x, step_y = cell[0] + SHEET_GAP, cell[1] + caption_height + SHEET_GAP
    sheet = Image.new("RGB", (columns * step_x + SHEET_GAP, rows * step_y + SHEET_GAP), "white")
    draw = ImageDraw.Draw(sheet)
    for i, frame in enumerate(frames):
        x = SHEET_GAP + (i % columns) * step_x
        y = SHEET_GAP + (i // columns) * step_y
        sheet.paste(_fit(frame.image, cell), (x, y))
        for j, line in enumerate(_wrap(frame.caption, draw, font, cell[0])):
            draw.text((x, y + cell[1] + 2 + j * line_height), line, fill="black", font=font)
    return sheet


def write_contact_sheet(
    frames: Sequence[FrameLike], path: str | Path, columns: int = 4, thumb: int = 256
) -> Path:
    sheet = contact_sheet(frames, columns, thumb)
    return _write_atomic(Path(path), lambda tmp: sheet.save(tmp, "PNG"))


def story_page(
    frames: Sequence[FrameLike],
    path: str | Path,
    title: str = "Story",
    image_files: Sequence[str] | None = None,
) -> Path:
    """An HTML page: each image followed by its text (HTML-escaped, line breaks kept).

    Images are embedded as base64 PNG, or referenced by `image_files` (paths relative
    to the page, one per frame).
    """
    frames = _as_frames(frames)
    if image_files is not None and len(image_files) != len(frames):
        raise InputError(f"{len(image_files)} image_files for {len(frames)} frames")
    sources = image_files or [_data_url(f.image) for f in frames]
    figures = "\n".join(
        f'<figure><img src="{html.escape(src)}" width="{f.image.width}" '
        f'height="{f.image.height}" alt="frame {i + 1}">'
        f"<figcaption>{html.escape(f.caption)}</figcaption></figure>"
        for i, (f, src) in enumerate(zip(frames, sources, strict=True))
    )
    page = _STORY_TEMPLATE.format(title=html.escape(title), figures=figures)
    return _write_atomic(Path(path), lambda tmp: tmp.write_text(page, encoding="utf-8"))


_STORY_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; }}
figure {{ margin: 0 0 2.5em 0; }}
img {{ max-width: 100%; height: auto; display: block; }}
figcaption {{ white-space: pre-wrap; margin-top: 0.6em; line-height: 1.4; }}
</style>
</head>
<body>
<h1>{title}</h1>
{figures}
</body>
</html>
"""


# -- sessions -------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionFrame:
    turn: int  # index of the image's turn in the session
    frame: Frame


def session_frames(source: Session | str | Path, include: str = "generated") -> list[SessionFrame]:
    """The image turns of a live session or a saved session folder, in order.

    include: "generated" (the model's images) or "all" (input images too). A generated
    image's caption is the last user text before it (the thinking system prompt
    skipped); an input image's is "input image".
    """
    if include not in ("generated", "all"):
        raise InputError(f"include must be 'generated' or 'all', got {include!r}")
    out, prompt = [], ""
    for index, (role, kind, text, image) in enumerate(_turns(source)):
        if role == "user" and kind == "text" and text != GEN_THINK_PROMPT:
            prompt = text
        elif kind == "image" and (role == "model" or include == "all"):
            caption = prompt if role == "model" else "input image"
            out.append(SessionFrame(index, Frame(image(), caption)))
    return out


def export_session(
    source: Session | str | Path,
    out: str | Path,
    formats: Iterable[str] = FORMATS,
    *,
    pipe: BagelPipeline | None = None,
    fps: float = 4,
    include: str = "generated",
    columns: int = 4,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """Export a session's frames into the folder `out`, all at once or not at all.

    Writes, by format: png → frames/frame_NNNN.png; gif → frames.gif; mp4 → frames.mp4;
    sheet → contact_sheet.png; story → story.html; session → session/ (the saved
    session, replayable with workbench.store.replay). Always: metrics.json and
    metrics.csv (per frame: PSNR and SSIM to the previous frame, drift from the first).

    Args:
        source: a live Session or a saved session folder.
        pipe: the model for the drift metric; a live session's own by default. Given
            with a folder, the folder must have been saved with this checkpoint.
            Without one the drift is left empty.
        include: "generated" or "all" images (see `session_frames`).
        overwrite: replace `out` when an earlier export made it (workbench.outputs);
            a non-empty `out` is refused otherwise, and so is one that is, holds or lies
            inside the saved session folder exported.
        progress: called with (parts done, parts) after the metrics and after each
            format; an exception it raises stops the export and nothing is written.
    """
    formats = _check_formats(formats)
    if "gif" in formats or "mp4" in formats:
        _check_fps(fps, GIF_MAX_FPS if "gif" in formats else FPS_RANGE[1])
    inputs = [] if isinstance(source, Session) else [Path(source)]
    out = outputs.check_output_folder(out, "export", inputs, overwrite)  # before any read
    if isinstance(source, Session):
        pipe = pipe or source.pipe
    elif pipe is not None:  # the drift metric runs this model: the session's own
        session_format.read_transcript(Path(source), pipe)
    picked = session_frames(source, include)
    if not picked:
        raise InputError(f"no frames to export: the session has no {include} images")
    _make_folder(out.parent)
    parts, done = len(formats) + 1, 1
    metrics = frame_metrics(pipe, [p.frame.image for p in picked])

    def tick() -> None:
        nonlocal done
        if progress is not None:
            progress(done, parts)
        done += 1

    tick()
    with _staging(out) as tmp:
        _write_formats(source, picked, metrics, formats, tmp, fps, columns, tick)
    return out


def _write_formats(
    source: Session | str | Path,
    picked: list[SessionFrame],
    metrics: list[FrameMetrics],
    formats: frozenset[str],
    folder: Path,
    fps: float,
    columns: int,
    tick: Callable[[], None],
) -> None:
    frames = [p.frame for p in picked]
    files = [f"frames/frame_{i + 1:04d}.png" for i in range(len(frames))]
    if "png" in formats:
        write_frames(frames, folder / "frames")
        tick()
    if "gif" in formats:
        write_gif(frames, folder / "frames.gif", fps)
        tick()
    if "mp4" in formats:
        write_mp4(frames, folder / "frames.mp4", fps)
        tick()
    if "sheet" in formats:
        captioned = [
            Frame(f.image, _sheet_caption(f, m)) for f, m in zip(frames, metrics, strict=True)
        ]
        write_contact_sheet(captioned, folder / "contact_sheet.png", columns)
        tick()
    if "story" in formats:
        story_page(frames, folder / "story.html", image_files=files if "png" in formats else None)
        tick()
    if "session" in formats:
        _copy_session(source, folder / "session")
        tick()
    rows = [
        {
            "frame": i + 1,
            "turn": p.turn,
            "file": files[i] if "png" in formats else None,
            "caption": p.frame.caption,
            "psnr_prev": m.psnr_prev,
            "ssim_prev": m.ssim_prev,
            "drift": m.drift,
        }
        for i, (p, m) in enumerate(zip(picked, metrics, strict=True))
    ]
    _write_metrics(rows, folder)


def _sheet_caption(frame: Frame, m: FrameMetrics) -> str:
    numbers = [] if m.psnr_prev is None else [f"PSNR {m.psnr_prev:.1f} dB"]
    numbers += [] if m.ssim_prev is None else [f"SSIM {m.ssim_prev:.3f}"]
    numbers += [] if m.drift is None else [f"drift {m.drift:.3f}"]
    return f"{m.index + 1}. {frame.caption}\n" + "  ".join(numbers)


def _write_metrics(rows: list[dict], folder: Path) -> None:
    """metrics.json (PSNR of identical frames as the string "inf") and metrics.csv."""

    def plain(value: object) -> object:
        return "inf" if isinstance(value, float) and math.isinf(value) else value

    rows = [{k: plain(v) for k, v in row.items()} for row in rows]
    text = json.dumps({"frames": rows}, indent=2, ensure_ascii=False) + "\n"
    _write_atomic(folder / "metrics.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    _write_atomic(
        folder / "metrics.csv", lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8")
    )


def _copy_session(source: Session | str | Path, target: Path) -> None:
    if isinstance(source, Session):
        store.save(source, target)
    else:
        copy_saved_session(Path(source), target)


def copy_saved_session(folder: Path, target: Path) -> list[Path]:
    """Copy the files a saved session's manifest lists (session.json, its images, its
    K/V snapshot) into the new folder `target`, nothing else: each must be a regular file
    inside `folder` (no link followed, no FIFO or device opened), and their sizes are
    checked against the free space before anything is read."""
    manifest = session_format.read_transcript(folder)
    names = [session_format.MANIFEST, *(t["image"] for t in manifest["turns"] if "image" in t)]
    if isinstance(manifest.get("snapshot"), dict):
        try:  # a cache: copied as it is when it is a file of the folder, else left out
            check_regular_file(folder / session_format.SNAPSHOT, folder)
            names.append(session_format.SNAPSHOT)
        except BagelError as err:
            log.warning("%s; the K/V snapshot, a cache, is left out of the copy", err)
    names = list(dict.fromkeys(names))
    sizes = {name: check_regular_file(folder / name, folder) for name in names}
    _make_folder(target)
    free = shutil.disk_usage(target).free
    if sum(sizes.values()) > free:
        raise ExportError(
            f"{folder}: its {len(names)} files take {sum(sizes.values())} bytes, more than "
            f"the {free} free at {target}"
        )
    copied = []
    for name, size in sizes.items():
        copied.append(target / name)
        _make_folder(copied[-1].parent)
        _write_atomic(copied[-1], lambda tmp, s=folder / name, n=size: _copy_exactly(s, tmp, n))
    return copied


def _copy_exactly(source: Path, target: Path, size: int) -> None:
    """Copy the `size` bytes of the regular file `source` (opened without following a
    link, checked again once open: it may have been swapped since it was checked)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(source, flags)
    except OSError as err:
        raise ExportError(f"{source}: cannot be read ({err.strerror})") from err
    with os.fdopen(fd, "rb") as src, open(target, "wb") as dst:
        info = os.fstat(src.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            raise ExportError(f"{source}: changed while it was being copied")
        left = size
        while left and (chunk := src.read(min(left, 1 << 20))):
            dst.write(chunk)
            left -= len(chunk)
        if left:
            raise ExportError(f"{source}: changed while it was being copied")


def _turns(source: Session | str | Path) -> list[tuple[str, str, str | None, Callable]]:
    """(role, kind, text, image loader) per turn, from a session or a saved folder."""
    if isinstance(source, Session):
        return [(t.role, t.kind, t.text, lambda im=t.image: im) for t in source.turns]
    folder = Path(source)
    manifest = session_format.read_transcript(folder)
    return [
        (
            e["role"],
            e["kind"],
            e.get("text"),
            lambda e=e, i=i: session_format.open_turn_image(folder, e["image"], i),
        )
        for i, e in enumerate(manifest["turns"])
    ]


# -- folder staging -------------------------------------------------------------------


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """Build an export in a temporary folder beside `out`, then rename it into place; on
    any error the temporary folder is removed and `out` is left as it was."""
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new-"))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; an export is meant to be shared
        yield tmp
        outputs.mark(tmp, "export")  # what lets a later overwrite replace it
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful move


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename tmp to out; an existing out (non-empty only when overwriting) is moved aside
    first and deleted after."""
    if not out.is_dir():
        os.replace(tmp, out)
        return
    if not any(out.iterdir()):
        out.rmdir()
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    os.replace(out, old / "export")
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


# -- helpers --------------------------------------------------------------------------


def _as_frames(frames: Sequence[FrameLike]) -> list[Frame]:
    if isinstance(frames, (Frame, Image.Image)) or not isinstance(frames, Sequence):
        raise InputError(f"frames must be a list of images or Frames, got {type(frames).__name__}")
    if not frames:
        raise InputError("no frames to write")
    out = []
    for i, frame in enumerate(frames):
        frame = Frame(frame) if isinstance(frame, Image.Image) else frame
        if not isinstance(frame, Frame) or not isinstance(frame.image, Image.Image):
            raise InputError(f"frames[{i}] is a {type(frame).__name__}, not an image or a Frame")
        if not isinstance(frame.caption, str):
            raise InputError(f"frames[{i}].caption must be a str")
        out.append(Frame(frame.image.convert("RGB"), frame.caption))
    return out


def _check_formats(formats: Iterable[str]) -> frozenset[str]:
    formats = frozenset([formats] if isinstance(formats, str) else formats)
    unknown = formats - FORMATS
    if unknown:
        raise InputError(f"unknown export format(s) {sorted(unknown)}; known: {sorted(FORMATS)}")
    if not formats:
        raise InputError(f"no export format chosen; known: {sorted(FORMATS)}")
    return formats


def _check_fps(fps: float, top: float) -> None:
    ok = isinstance(fps, (int, float)) and not isinstance(fps, bool)
    if not ok or not FPS_RANGE[0] <= fps <= top:
        raise InputError(f"fps must be a number between {FPS_RANGE[0]} and {top}, got {fps!r}")


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale to fit inside size keeping the aspect ratio, centred on black."""
    if image.size == size:
        return image
    scale = min(size[0] / image.width, size[1] / image.height)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    canvas = Image.new("RGB", size, "black")
    canvas.paste(
        image.resize((w, h), Image.Resampling.BICUBIC), ((size[0] - w) // 2, (size[1] - h) // 2)
    )
    return canvas


def _common_size(images: list[Image.Image]) -> list[Image.Image]:
    return [_fit(image, images[0].size) for image in images]


def _even(image: Image.Image) -> Image.Image:
    """Pad an odd width / height by one repeated column / row (H.264 4:2:0 needs even)."""
    w, h = image.size
    if w % 2 == 0 and h % 2 == 0:
        return image
    pixels = np.pad(np.asarray(image), ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return Image.fromarray(pixels)


def _encode_h264(images: list[Image.Image], path: Path, fps: float) -> None:
    """Pipe raw RGB frames to ffmpeg; a non-zero exit is an ExportError with its message."""
    import imageio_ffmpeg  # the ffmpeg binary shipped in the wheel; imported when needed

    w, h = images[0].size
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        *("-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}"),
        *("-r", f"{fps:g}", "-i", "-", "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p"),
        *("-crf", str(MP4_CRF), "-movflags", "+faststart", "-f", "mp4", str(path)),
    ]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=log)
        try:
            for image in images:
                process.stdin.write(np.ascontiguousarray(np.asarray(image)).tobytes())
        except BrokenPipeError:
            pass  # ffmpeg quit early; its exit code and log say why
        finally:
            process.stdin.close()
            code = process.wait()
        if code != 0:
            log.seek(0)
            message = log.read().decode(errors="replace").strip()[-2000:]
            raise ExportError(f"{path}: ffmpeg failed (exit {code}): {message}")


def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _wrap(text: str, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels, at most CAPTION_LINES lines; a cut ends in "…"."""
    lines: list[str] = []
    for paragraph in text.splitlines():
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if line and draw.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    more = len(lines) > CAPTION_LINES
    lines = lines[:CAPTION_LINES]
    return [
        _clip(line, draw, font, width, more and i == len(lines) - 1) for i, line in enumerate(lines)
    ]


def _clip(
    line: str, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, width: int, cut: bool
) -> str:
    if not cut and draw.textlength(line, font=font) <= width:
        return line
    while line and draw.textlength(line + "…", font=font) > width:
        line = line[:-1]
    return line + "…"


def _make_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"{folder}: cannot create the folder ({err.strerror})") from err


def _write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """write(tmp) to a temporary file beside path (same suffix), then rename it to path."""
    _make_folder(path.parent)
    if path.is_dir():
        raise ExportError(f"{path}: is a folder")
    try:
        return write_atomic(path, write)
    except PermissionError as err:
        raise ExportError(f"{path.parent}: cannot write here ({err.strerror})") from err

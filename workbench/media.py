"""Writers of frame sequences: numbered PNGs, GIF, MP4, contact sheet, story page.

A frame is a PIL image with an optional caption (`Frame`); every writer also takes
plain images. Each file is written to a temporary name next to its target and renamed,
so a file appears whole or not at all.

Frames of different sizes (GIF, MP4, contact sheet): each frame is scaled to fit inside
the first frame's size, keeping its aspect ratio (bicubic), and centred on black.
MP4 (H.264, yuv420p) needs even sides: an odd width or height is padded by repeating
the last column or row, so nothing is cut off and no bar appears.
"""

from __future__ import annotations

import base64
import html
import io
import math
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bagel.errors import BagelError, InputError
from workbench.files import write_atomic

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
    make_folder(folder)
    digits = max(4, len(str(len(frames))))
    paths = [folder / f"{prefix}_{i + 1:0{digits}d}.png" for i in range(len(frames))]
    for frame, path in zip(frames, paths, strict=True):
        export_file(path, lambda tmp, im=frame.image: im.save(tmp, "PNG"))
    return paths


def write_gif(frames: Sequence[FrameLike], path: str | Path, fps: float = 4) -> Path:
    """A looping GIF at `fps` (at most 50). The encoder merges identical consecutive
    frames into one longer frame (the animation plays the same)."""
    frames = _as_frames(frames)
    check_fps(fps, GIF_MAX_FPS)
    images = _common_size([f.image for f in frames])
    duration = max(20, round(1000 / fps / 10) * 10)  # ms, in the format's 1/100 s steps

    def write(tmp: Path) -> None:
        images[0].save(
            tmp, "GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
        )

    return export_file(Path(path), write)


def write_mp4(frames: Sequence[FrameLike], path: str | Path, fps: float = 4) -> Path:
    """An H.264 MP4 (yuv420p, crf 18, one video frame per frame) with the ffmpeg binary
    that imageio-ffmpeg ships."""
    frames = _as_frames(frames)
    check_fps(fps, FPS_RANGE[1])
    images = [_even(image) for image in _common_size([f.image for f in frames])]
    return export_file(Path(path), lambda tmp: _encode_h264(images, tmp, fps))


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
    return export_file(Path(path), lambda tmp: sheet.save(tmp, "PNG"))


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
    return export_file(Path(path), lambda tmp: tmp.write_text(page, encoding="utf-8"))


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


def check_fps(fps: float, top: float) -> None:
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


def make_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"{folder}: cannot create the folder ({err.strerror})") from err


def export_file(path: Path, write: Callable[[Path], object]) -> Path:
    """write(tmp) to a temporary file beside path (same suffix), then rename it to path."""
    make_folder(path.parent)
    if path.is_dir():
        raise ExportError(f"{path}: is a folder")
    try:
        return write_atomic(path, write)
    except PermissionError as err:
        raise ExportError(f"{path.parent}: cannot write here ({err.strerror})") from err

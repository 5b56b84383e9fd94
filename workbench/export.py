"""A saved session's frames exported: numbered PNGs, GIF, MP4, contact sheet, story page,
the saved session itself, and the frame metrics (the writers are in workbench.media).
`export_session` writes a whole folder to a temporary name beside its target and renames
it, so an export appears whole or not at all.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bagel.errors import BagelError, InputError
from bagel.inputs import ProgressFn
from bagel.pipeline import BagelPipeline
from bagel.tokenizer import GEN_THINK_PROMPT
from workbench import outputs, store
from workbench.files import check_regular_file
from workbench.media import (
    FPS_RANGE,
    GIF_MAX_FPS,
    ExportError,
    Frame,
    check_fps,
    export_file,
    make_folder,
    story_page,
    write_contact_sheet,
    write_frames,
    write_gif,
    write_mp4,
)
from workbench.metrics import FrameMetrics, frame_metrics
from workbench.session import Session
from workbench.store import session_format

log = logging.getLogger(__name__)

FORMATS = frozenset({"png", "gif", "mp4", "sheet", "story", "session"})


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
        check_fps(fps, GIF_MAX_FPS if "gif" in formats else FPS_RANGE[1])
    inputs = [] if isinstance(source, Session) else [Path(source)]
    out = outputs.check_output_folder(out, "export", inputs, overwrite)  # before any read
    if isinstance(source, Session):
        pipe = pipe or source.pipe
    elif pipe is not None:  # the drift metric runs this model: the session's own
        session_format.read_transcript(Path(source), pipe)
    picked = session_frames(source, include)
    if not picked:
        raise InputError(f"no frames to export: the session has no {include} images")
    make_folder(out.parent)
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
    export_file(folder / "metrics.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    export_file(
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
    make_folder(target)
    free = shutil.disk_usage(target).free
    if sum(sizes.values()) > free:
        raise ExportError(
            f"{folder}: its {len(names)} files take {sum(sizes.values())} bytes, more than "
            f"the {free} free at {target}"
        )
    copied = []
    for name, size in sizes.items():
        copied.append(target / name)
        make_folder(copied[-1].parent)
        export_file(copied[-1], lambda tmp, s=folder / name, n=size: _copy_exactly(s, tmp, n))
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


def _check_formats(formats: Iterable[str]) -> frozenset[str]:
    formats = frozenset([formats] if isinstance(formats, str) else formats)
    unknown = formats - FORMATS
    if unknown:
        raise InputError(f"unknown export format(s) {sorted(unknown)}; known: {sorted(FORMATS)}")
    if not formats:
        raise InputError(f"no export format chosen; known: {sorted(FORMATS)}")
    return formats

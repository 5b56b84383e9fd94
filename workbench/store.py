"""Saving, loading and replaying sessions.

A saved session is a directory:

    session.json      format version, checkpoint identity, dtype, device kind, package
                      version, and every turn (role, kind, text, image file, parameters,
                      seed, seconds)
    images/NNNN.png   every input and output image, by turn index

Every file is written to a temporary name and renamed, the manifest last, so a save
after each turn leaves a loadable session whatever moment the process dies. Loading
rebuilds the contexts from the turns (deterministic: image turns carry the seed of
their VAE posterior sample); replaying regenerates the model's turns and compares them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import workbench
from bagel.errors import BagelError
from bagel.pipeline import BagelPipeline
from workbench.metrics import psnr
from workbench.params import GenerationParams
from workbench.session import Session, Turn

MANIFEST = "session.json"
FORMAT = "bagel-workbench-session"
VERSION = 1
ROLES_KINDS = {
    ("user", "text"),
    ("user", "image"),
    ("model", "text"),
    ("model", "thinking"),
    ("model", "image"),
    ("model", "choice"),
}


class SessionFileError(BagelError):
    """A saved session directory is missing, malformed, of another version or model."""


def save(session: Session, folder: str | Path) -> Path:
    """Write the session to folder (created if needed); images already saved are kept."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    turns = []
    for index, turn in enumerate(session.turns):
        entry = {
            "role": turn.role,
            "kind": turn.kind,
            "text": turn.text,
            "seed": turn.seed,
            "seconds": round(turn.seconds, 4),
            "params": None if turn.params is None else _params_dict(turn.params),
        }
        if turn.options is not None:
            entry["options"], entry["scores"] = list(turn.options), list(turn.scores)
        if turn.image is not None:
            entry["image"] = f"images/{index:04d}.png"
            if not (folder / entry["image"]).exists():
                _write_atomic(folder / entry["image"], lambda f, im=turn.image: im.save(f, "PNG"))
        turns.append(entry)
    pipe = session.pipe
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "package_version": workbench.__version__,
        "checkpoint": pipe.identity,
        "dtype": str(pipe.net.dtype).removeprefix("torch."),
        "device": pipe.device.type,
        "turns": turns,
    }
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    _write_atomic(folder / MANIFEST, lambda f: f.write(text.encode()))
    return folder


def load(folder: str | Path, pipe: BagelPipeline, allow_other_checkpoint: bool = False) -> Session:
    """Rebuild a saved session on `pipe` by re-running its turns' appends (no generation)."""
    folder = Path(folder)
    manifest = read_manifest(folder, pipe, allow_other_checkpoint)
    session = Session(pipe)
    for index, entry in enumerate(manifest["turns"]):
        _restore(session, folder, entry, index)
    return session


@dataclass(frozen=True)
class FrameDiff:
    turn: int
    max_abs_diff: int
    psnr: float  # inf when identical


@dataclass(frozen=True)
class ReplayReport:
    frames: list[FrameDiff]
    texts_equal: list[tuple[int, bool]]
    seconds: float

    @property
    def identical(self) -> bool:
        return all(f.max_abs_diff == 0 for f in self.frames) and all(e for _, e in self.texts_equal)


def replay(
    folder: str | Path, pipe: BagelPipeline, allow_other_checkpoint: bool = False
) -> ReplayReport:
    """Re-run a saved session's turns with their seeds; compare every generated output."""
    folder = Path(folder)
    manifest = read_manifest(folder, pipe, allow_other_checkpoint)
    session, frames, texts, started = Session(pipe), [], [], time.perf_counter()
    for index, entry in enumerate(manifest["turns"]):
        params = GenerationParams(**entry["params"]) if entry["params"] else None
        if entry["role"] == "model" and entry["kind"] == "image":
            image = session.generate_image(params)
            frames.append(_compare(index, image, open_turn_image(folder, entry["image"], index)))
        elif entry["kind"] == "choice":
            answer, _ = session._answer(entry["options"])
            texts.append((index, answer == entry["text"]))
        elif entry["role"] == "model":
            reply = session.pipe.generate_text(
                session.main,
                params.max_think_tokens,
                params.do_sample,
                params.temperature,
                params.generator(),
            ).text
            texts.append((index, reply == entry["text"]))
            _restore(session, folder, {**entry, "text": reply}, index)
        else:
            _restore(session, folder, entry, index)
    report = ReplayReport(frames, texts, time.perf_counter() - started)
    _write_atomic(
        folder / "replay_report.json",
        lambda f: f.write(json.dumps(dataclasses.asdict(report), indent=2, default=str).encode()),
    )
    return report


def read_manifest(folder: Path, pipe: BagelPipeline | None, allow_other_checkpoint: bool) -> dict:
    """Parse and validate session.json; errors name the file and the field.

    The checkpoint must be `pipe`'s unless allow_other_checkpoint (or pipe is None:
    reading only, as an export does).
    """
    path = folder / MANIFEST
    if not path.is_file():
        raise SessionFileError(f"{path}: no saved session here")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SessionFileError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SessionFileError(f"{path}: not a {FORMAT} manifest")
    version = manifest.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise SessionFileError(
            f"{path}: format version {version!r} is newer than this "
            f"package reads ({VERSION}); upgrade bagel-workbench"
        )
    other = pipe is not None and manifest.get("checkpoint") != pipe.identity
    if other and not allow_other_checkpoint:
        raise SessionFileError(
            f"{path}: saved with checkpoint {manifest.get('checkpoint')}, "
            f"but the loaded model is {pipe.identity}; pass "
            "allow_other_checkpoint to rebuild it on this model anyway"
        )
    turns = manifest.get("turns")
    if not isinstance(turns, list):
        raise SessionFileError(f"{path}: field 'turns' must be a list")
    for index, entry in enumerate(turns):
        _check_turn(path, index, entry)
    return manifest


def _check_turn(path: Path, index: int, entry: object) -> None:
    where = f"{path}: turns[{index}]"
    if not isinstance(entry, dict):
        raise SessionFileError(f"{where} must be an object")
    if (entry.get("role"), entry.get("kind")) not in ROLES_KINDS:
        raise SessionFileError(
            f"{where}: role/kind {entry.get('role')!r}/{entry.get('kind')!r} "
            f"is not one of {sorted(ROLES_KINDS)}"
        )
    if entry["kind"] == "image" and not isinstance(entry.get("image"), str):
        raise SessionFileError(f"{where}.image must be a file name")
    if entry["kind"] != "image" and not isinstance(entry.get("text"), str):
        raise SessionFileError(f"{where}.text must be a string")
    if entry["kind"] == "choice":
        options = entry.get("options")
        if (
            not isinstance(options, list)
            or not all(isinstance(o, str) and o.strip() for o in options)
            or entry["text"] not in options
        ):
            raise SessionFileError(f"{where}.options must be a list holding the answer text")
        scores = entry.get("scores")
        if not isinstance(scores, list) or len(scores) != len(options):
            raise SessionFileError(f"{where}.scores must be a list, one number per option")
    elif entry["role"] == "model" and not isinstance(entry.get("params"), dict):
        raise SessionFileError(f"{where}.params must be an object")
    if not isinstance(entry.get("seed", 0), int):
        raise SessionFileError(f"{where}.seed must be an integer")
    if isinstance(entry.get("params"), dict):
        try:
            GenerationParams(**entry["params"])
        except (TypeError, BagelError) as err:
            raise SessionFileError(f"{where}.params: {err}") from err


def _restore(session: Session, folder: Path, entry: dict, index: int) -> None:
    """Append a recorded turn as it happened, without generating anything."""
    role, kind, seed = entry["role"], entry["kind"], entry.get("seed", 0)
    params = GenerationParams(**entry["params"]) if entry.get("params") else None
    before = session._marks()
    if role == "user" and kind == "text":
        session._append_prompt(entry["text"])
    elif kind == "image":
        image = open_turn_image(folder, entry["image"], index)
        session._append_image(image, seed)
    else:  # a model reply or thinking: main context only
        session.pipe.append_text(session.main, entry["text"])
    session.turns.append(
        Turn(
            role,
            kind,
            text=entry.get("text"),
            image=image if kind == "image" else None,
            params=params,
            seed=seed,
            seconds=entry.get("seconds", 0.0),
            before=before,
            options=tuple(entry["options"]) if kind == "choice" else None,
            scores=tuple(entry["scores"]) if kind == "choice" else None,
        )
    )


def open_turn_image(folder: Path, name: str, index: int) -> Image.Image:
    """The image file of turns[index], which must lie inside the session folder."""
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise SessionFileError(
            f"{folder / MANIFEST}: turns[{index}].image {name!r} escapes the session directory"
        )
    if not path.is_file():
        raise SessionFileError(f"{folder / MANIFEST}: turns[{index}].image {name!r} is missing")
    from bagel.image import open_image

    return open_image(path)


def _compare(index: int, image: Image.Image, saved: Image.Image) -> FrameDiff:
    a = np.asarray(image, dtype=np.int16)
    b = np.asarray(saved, dtype=np.int16)
    if a.shape != b.shape:
        return FrameDiff(index, 255, 0.0)
    return FrameDiff(index, int(np.abs(a - b).max()), psnr(image, saved))


def _params_dict(params: GenerationParams) -> dict:
    out = dataclasses.asdict(params)
    out["cfg_interval"] = list(out["cfg_interval"])
    return out


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

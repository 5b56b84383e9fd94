"""The saved-session format on disk: its file names, versions and limits, the error
every reader raises, and `read_manifest`, the one check that load, replay, export, the
server and the app make of a folder, so that they refuse the same folders (workbench/store/persist.py
writes and reads sessions; workbench/store/kv_snapshot.py the optional K/V snapshot).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open

from bagel import safejson
from bagel.errors import BagelError
from bagel.forcing import check_forcing
from bagel.pipeline import BagelPipeline
from bagel.tokenizer import check_text
from workbench.files import check_regular_file
from workbench.params import ContextLimit, GenerationParams, check_seed
from workbench.transcript import Forcing

MANIFEST = "session.json"
FORMAT = "bagel-workbench-session"
# 2: drop turns. A session without drops is still written as version 1 (older readers
# load it as before); one with drops as 2, which older readers refuse instead of
# silently rebuilding a context that still holds the dropped tokens.
VERSION = 2
ROLES_KINDS = {
    ("user", "text"),
    ("user", "image"),
    ("model", "text"),
    ("model", "thinking"),
    ("model", "image"),
    ("model", "choice"),
    ("session", "drop"),
}
PARTS = ("vae", "vit")
SNAPSHOT = "kv.safetensors"
USE_TURNS = "; pass use_snapshot=False to rebuild the contexts from the turns instead"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_THREADS = 1024  # a turn's recorded CPU thread count (replay starts that many)
IMAGE_NAME = re.compile(r"images/(\d{4,})-([0-9a-f]{16})\.png")  # as `save` names them


class SessionFileError(BagelError):
    """A saved session directory is missing, malformed, of another version or model."""


def read_manifest(
    folder: Path,
    pipe: BagelPipeline | None,
    allow_other_checkpoint: bool,
    check_snapshot: bool = True,
) -> dict:
    """Check a saved session folder and return its parsed session.json: the one check
    every reader (load, replay, export, the app) makes, so they give the same verdict.

    Every file it lists (the manifest, the images, the K/V snapshot) is a regular file
    inside the folder, checked before it is opened (no link, FIFO or device; nothing
    else in the folder is ever read); the manifest is bounded in size and depth, every
    field is of its type and range, every text valid Unicode, and a recorded K/V
    snapshot the file saved with these turns (unless not check_snapshot: `load` with
    use_snapshot=False; or the session is of another checkpoint than `pipe`, whose
    snapshot is never read). Errors name the file and the field.

    The checkpoint must be `pipe`'s unless allow_other_checkpoint (or pipe is None:
    reading only). An export reads less: `read_transcript`.
    """
    folder = Path(folder)
    path, manifest = _parse(folder)
    other = pipe is not None and manifest.get("checkpoint") != pipe.identity
    if other and not allow_other_checkpoint:
        raise SessionFileError(
            f"{path}: saved with checkpoint {manifest.get('checkpoint')}, "
            f"but the loaded model is {pipe.identity}; pass "
            "allow_other_checkpoint to rebuild it on this model anyway"
        )
    for index, entry in enumerate(_turns(path, manifest)):
        _check_turn(path, index, entry)
        if entry["kind"] == "image":
            _image_path(folder, entry["image"], index)
    context_limit(folder, manifest)
    if check_snapshot and not other and "snapshot" in manifest:  # another model's: ignored
        check_snapshot_file(folder, manifest)
    return manifest


def read_transcript(folder: Path, pipe: BagelPipeline | None = None) -> dict:
    """What an export reads of a saved session folder, checked as `read_manifest` checks
    it: the manifest, and each turn's role, kind, text, options and image file. The
    fields an export does not use (seeds, timings, thread counts, parameters, the K/V
    snapshot, a cache) are not judged, so an export is not refused over them. With
    `pipe`, the session must have been saved with its checkpoint."""
    folder = Path(folder)
    path, manifest = _parse(folder)
    if pipe is not None and manifest.get("checkpoint") != pipe.identity:
        raise SessionFileError(
            f"{path}: saved with checkpoint {manifest.get('checkpoint')}, but the loaded "
            f"model is {pipe.identity}"
        )
    for index, entry in enumerate(_turns(path, manifest)):
        _check_content(path, index, entry)
        if entry["kind"] == "image":
            _image_path(folder, entry["image"], index)
    return manifest


def _parse(folder: Path) -> tuple[Path, dict]:
    """session.json's path and content: a regular file, bounded JSON, this format in a
    version this package reads."""
    path = folder / MANIFEST
    if not path.exists() and not path.is_symlink():
        raise SessionFileError(f"{path}: no saved session here")
    try:
        check_regular_file(path, folder, MAX_MANIFEST_BYTES)
    except BagelError as err:
        raise SessionFileError(str(err)) from err
    try:
        manifest = safejson.loads(path.read_bytes().decode("utf-8"))
    except (safejson.JSONLimitError, UnicodeDecodeError) as err:
        raise SessionFileError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SessionFileError(f"{path}: not a {FORMAT} manifest")
    version = manifest.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise SessionFileError(
            f"{path}: format version {version!r} is newer than this "
            f"package reads ({VERSION}); upgrade bagel-workbench"
        )
    return path, manifest


def _turns(path: Path, manifest: dict) -> list:
    turns = manifest.get("turns")
    if not isinstance(turns, list):
        raise SessionFileError(f"{path}: field 'turns' must be a list")
    return turns


def context_limit(folder: Path, manifest: dict) -> ContextLimit:
    limit = manifest.get("context_limit", {})  # absent before version 2
    try:
        return ContextLimit(**limit)
    except (TypeError, BagelError) as err:
        raise SessionFileError(f"{folder / MANIFEST}: context_limit: {err}") from err


def _check_content(path: Path, index: int, entry: object) -> None:
    """A turn's role, kind, text, image name and options: what every reader uses."""
    where = f"{path}: turns[{index}]"
    if not isinstance(entry, dict):
        raise SessionFileError(f"{where} must be an object")
    role_kind = (entry.get("role"), entry.get("kind"))
    if not all(isinstance(v, str) for v in role_kind) or role_kind not in ROLES_KINDS:
        raise SessionFileError(
            f"{where}: role/kind {entry.get('role')!r}/{entry.get('kind')!r} "
            f"is not one of {sorted(ROLES_KINDS)}"
        )
    if entry["kind"] == "drop":
        return
    if entry["kind"] == "image" and not isinstance(entry.get("image"), str):
        raise SessionFileError(f"{where}.image must be a file name")
    if entry["kind"] != "image":
        try:
            check_text(entry.get("text"))  # a user's text may be blank (Session.add_text)
        except BagelError as err:
            raise SessionFileError(f"{where}.{err}") from err
    if entry["kind"] == "choice":
        options = entry.get("options")
        if (
            not isinstance(options, list)
            or not all(isinstance(o, str) and o.strip() for o in options)
            or entry["text"] not in options
        ):
            raise SessionFileError(f"{where}.options must be a list holding the answer text")
        for i, option in enumerate(options):
            try:
                check_text(option, f"options[{i}]")
            except BagelError as err:
                raise SessionFileError(f"{where}.{err}") from err


def _check_turn(path: Path, index: int, entry: object) -> None:
    """Every field of a turn (`_check_content`, then its numbers and parameters)."""
    _check_content(path, index, entry)
    where = f"{path}: turns[{index}]"
    try:
        check_seed(entry.get("seed", 0))
    except BagelError as err:
        raise SessionFileError(f"{where}.{err}") from err
    seconds = entry.get("seconds", 0.0)
    if not _finite(seconds) or seconds < 0:
        raise SessionFileError(f"{where}.seconds must be a finite number >= 0, got {seconds!r}")
    threads = entry.get("threads", 1)
    if type(threads) is not int or not 1 <= threads <= MAX_THREADS:
        raise SessionFileError(
            f"{where}.threads must be a whole number from 1 to {MAX_THREADS}, got {threads!r}"
        )
    if entry["kind"] == "drop":
        dropped = entry.get("dropped")
        if not isinstance(dropped, list) or not all(_is_part(p) for p in dropped):
            raise SessionFileError(
                f"{where}.dropped must be a list of [image turn index, 'vae' or 'vit']"
            )
        return
    if entry["kind"] == "choice":
        scores = entry.get("scores")
        if (
            not isinstance(scores, list)
            or len(scores) != len(entry["options"])
            or not all(_finite(score) for score in scores)
        ):
            raise SessionFileError(f"{where}.scores must be a list, one finite number per option")
    elif entry["role"] == "model" and not isinstance(entry.get("params"), dict):
        raise SessionFileError(f"{where}.params must be an object")
    if "forcing" in entry:
        _check_forcing_entry(where, entry)
    if isinstance(entry.get("params"), dict):
        try:
            GenerationParams(**entry["params"])
        except (TypeError, BagelError) as err:
            raise SessionFileError(f"{where}.params: {err}") from err


def _check_forcing_entry(where: str, entry: dict) -> None:
    forcing = entry["forcing"]
    fields = {f.name for f in dataclasses.fields(Forcing)}
    if (entry["role"], entry["kind"]) != ("model", "image") or not isinstance(forcing, dict):
        raise SessionFileError(f"{where}.forcing belongs to a model image turn, as an object")
    if set(forcing) != fields:
        raise SessionFileError(f"{where}.forcing must have exactly the fields {sorted(fields)}")
    try:
        check_forcing(forcing["schedule"], forcing["window"], forcing["frames"])
    except BagelError as err:
        raise SessionFileError(f"{where}.forcing: {err}") from err
    if not isinstance(forcing["index"], int) or not 0 <= forcing["index"] < forcing["frames"]:
        raise SessionFileError(f"{where}.forcing.index must be in 0..frames-1")


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_part(part: object) -> bool:
    return (
        isinstance(part, list)
        and len(part) == 2
        and isinstance(part[0], int)
        and not isinstance(part[0], bool)
        and part[1] in PARTS
    )


def check_snapshot_file(folder: Path, manifest: dict) -> None:
    """The snapshot a manifest records is that very file (sha256), saved with exactly
    these turns (the transcript digest in its header), holding only finite values: what
    every reader checks, with or without a model (the file is read whole for the sha256
    anyway; the value scan is a second read of it)."""
    path, entry = folder / SNAPSHOT, manifest["snapshot"]
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise SessionFileError(
            f"{folder / MANIFEST}: field 'snapshot' must be an object with a 'sha256' string"
        )
    if not path.exists() and not path.is_symlink():
        raise SessionFileError(f"{path} is missing, but {MANIFEST} records a snapshot{USE_TURNS}")
    try:
        check_regular_file(path, folder)
    except BagelError as err:
        raise SessionFileError(f"{err}{USE_TURNS}") from err
    if sha256_of(path) != entry["sha256"]:
        raise SessionFileError(
            f"{path}: sha256 differs from the one {MANIFEST} records (the file was changed, "
            f"cut short, or left by another save){USE_TURNS}"
        )
    meta, _ = snapshot_header(path)
    if meta.get("transcript") != transcript_digest(manifest["turns"]):
        raise SessionFileError(
            f"{path}: saved with other turns than {MANIFEST} holds (transcript digest "
            f"differs){USE_TURNS}"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            bad = next((k for k in f.keys() if not torch.isfinite(f.get_tensor(k)).all()), None)
    except (SafetensorError, OSError) as err:
        raise SessionFileError(f"{path}: cannot read tensor data ({err}){USE_TURNS}") from err
    if bad is not None:
        raise SessionFileError(f"{path}: tensor {bad} holds NaN or infinite values{USE_TURNS}")


def snapshot_header(path: Path) -> tuple[dict, dict[str, list[int]]]:
    """The snapshot's metadata and tensor shapes (no tensor data read)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}
    except (SafetensorError, OSError) as err:
        raise SessionFileError(
            f"{path}: not a readable safetensors file ({err}){USE_TURNS}"
        ) from err
    return meta, shapes


def transcript_digest(turns: list) -> str:
    """sha256 of the manifest's turns list, as canonical JSON."""
    text = json.dumps(turns, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def open_turn_image(folder: Path, name: str, index: int, verify: bool = True) -> Image.Image:
    """The image file of turns[index]: a regular file inside the session folder, whose
    content matches the digest in its name (`save` names it so; a swapped or edited image
    is refused). verify=False skips the digest: replay compares a recorded output frame
    with the regenerated one and reports an edited frame as a difference."""
    from bagel.image import open_image

    path = _image_path(folder, name, index)
    image = open_image(path)
    named = IMAGE_NAME.fullmatch(name)
    if verify and named and hashlib.sha256(image.tobytes()).hexdigest()[:16] != named.group(2):
        raise SessionFileError(
            f"{folder / MANIFEST}: turns[{index}].image {name!r} was changed since it was "
            "saved (replaced or edited): its pixels do not match the digest in its name"
        )
    return image


def _image_path(folder: Path, name: str, index: int) -> Path:
    """turns[index]'s image file, checked without opening it: inside the folder, a
    regular file, no link."""
    where = f"{folder / MANIFEST}: turns[{index}].image {name!r}"
    path = folder / name
    if Path(name).is_absolute() or not Path(os.path.normpath(path)).is_relative_to(folder):
        raise SessionFileError(f"{where} escapes the session directory")
    if not path.exists() and not path.is_symlink():
        raise SessionFileError(f"{where} is missing")
    try:
        check_regular_file(path, folder)
    except BagelError as err:
        raise SessionFileError(f"{where}: {err}") from err
    return path


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()

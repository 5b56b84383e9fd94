"""Saving, loading and replaying sessions.

A saved session is a directory:

    session.json      format version, checkpoint identity, dtype, device kind, package
                      version, the context limit, and every turn (role, kind, text, image
                      file, parameters, seed, seconds; a drop turn: the image parts it
                      removed; a generated frame: its consistency metrics)
    images/NNNN-H.png every input and output image, by turn index and content hash
    kv.safetensors    optional K/V snapshot: the main and image-dropped contexts, per
                      layer (`k.main.0`, `v.main.0`, …, `k.image_dropped.0`, …), with
                      their lengths, ropes and per-turn marks in the header metadata

Every file is written to a temporary name and renamed, the manifest last, so a save
after each turn leaves a loadable session whatever moment the process dies (if it dies
between the snapshot's rename and the manifest's, the snapshot no longer matches the
manifest's sha256: `load` says so, and loads with use_snapshot=False). Loading
rebuilds the contexts from the turns (deterministic: image turns carry the seed of
their VAE posterior sample), or reads them from the snapshot when there is one;
replaying regenerates the model's turns and compares them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import workbench
from bagel import safejson
from bagel.errors import BagelError
from bagel.forcing import check_forcing
from bagel.kv import KVContext
from bagel.pipeline import BagelPipeline, ProgressFn
from bagel.tokenizer import check_text
from workbench import outputs
from workbench.files import check_regular_file, write_atomic
from workbench.metrics import frame_metrics, psnr
from workbench.params import ContextLimit, GenerationParams, check_seed
from workbench.replay_report import FrameDiff, ReplayReport
from workbench.session import Forcing, Mark, Session, Turn

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
SNAPSHOT_FORMAT = "bagel-workbench-kv"
SNAPSHOT_VERSION = 1
STORED_CONTEXTS = ("main", "image_dropped")  # the text-dropped context is a mark into main
USE_TURNS = "; pass use_snapshot=False to rebuild the contexts from the turns instead"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_THREADS = 1024  # a turn's recorded CPU thread count (replay starts that many)
IMAGE_NAME = re.compile(r"images/(\d{4,})-([0-9a-f]{16})\.png")  # as `save` names them


class SessionFileError(BagelError):
    """A saved session directory is missing, malformed, of another version or model."""


def save(session: Session, folder: str | Path, snapshot: bool = False) -> Path:
    """Write the session to folder (created if needed); images already saved are kept.

    With snapshot=True the contexts' K/V also go to kv.safetensors (before the manifest,
    which records its sha256), so that `load` resumes without re-encoding any turn. A save
    without snapshot removes an older kv.safetensors (after the manifest no longer names it).
    """
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
        if turn.kind == "drop":
            entry["dropped"] = [list(part) for part in turn.dropped]
        if turn.forcing is not None:
            entry["forcing"] = dataclasses.asdict(turn.forcing)
        if turn.threads is not None:
            entry["threads"] = turn.threads
        if turn.image is not None:
            # named by content: an image already saved is not written again, and a turn
            # redone after a rewind gets a new file instead of keeping the stale one
            digest = hashlib.sha256(turn.image.tobytes()).hexdigest()[:16]
            entry["image"] = f"images/{index:04d}-{digest}.png"
            if not (folder / entry["image"]).exists():
                write_atomic(folder / entry["image"], lambda t, im=turn.image: im.save(t, "PNG"))
        turns.append(entry)
    _add_metrics(session, turns)
    pipe = session.pipe
    manifest = {
        "format": FORMAT,
        "version": VERSION if any(t.kind == "drop" for t in session.turns) else 1,
        "package_version": workbench.__version__,
        "checkpoint": pipe.identity,
        "dtype": _dtype_name(pipe.net.dtype),
        "profile": pipe.profile,  # how the weights were held (int8 / nf4 change the outputs)
        "device": pipe.device.type,
        "context_limit": dataclasses.asdict(session.limit),
        "turns": turns,
    }
    if snapshot:
        manifest["snapshot"] = {"file": SNAPSHOT, "sha256": _write_snapshot(session, folder, turns)}
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    write_atomic(folder / MANIFEST, lambda t: t.write_bytes(text.encode()))
    if not snapshot:
        (folder / SNAPSHOT).unlink(missing_ok=True)
    kept = {folder / t["image"] for t in turns if "image" in t}
    for stale in (folder / "images").glob("*.png"):  # left by turns rewound since
        if stale not in kept:
            stale.unlink(missing_ok=True)
    return folder


def _add_metrics(session: Session, turns: list[dict]) -> None:
    """Per generated frame: PSNR and SSIM to the previous generated frame, drift of its
    SigLIP features from the first (workbench.metrics); written, never read back."""
    generated = [i for i, t in enumerate(session.turns) if (t.role, t.kind) == ("model", "image")]
    if not generated:
        return
    metrics = frame_metrics(session.pipe, [session.turns[i].image for i in generated])
    for i, m in zip(generated, metrics, strict=True):
        values = {"psnr_prev": m.psnr_prev, "ssim_prev": m.ssim_prev, "drift": m.drift}
        turns[i]["metrics"] = {k: "inf" if v == math.inf else v for k, v in values.items()}


def load(
    folder: str | Path,
    pipe: BagelPipeline,
    allow_other_checkpoint: bool = False,
    use_snapshot: bool = True,
    progress: ProgressFn | None = None,
) -> Session:
    """Rebuild a saved session on `pipe`; nothing is generated and no file is written.

    Without a snapshot every turn's tokens are appended again. With one (saved with
    snapshot=True) the contexts are read from kv.safetensors instead (the turns and
    images still come from session.json and images/). The snapshot must be the file the
    manifest recorded (sha256), made by this checkpoint (identity) in this dtype and
    layout, for exactly these turns (transcript digest); otherwise SessionFileError says
    what differs. Overrides: use_snapshot=False ignores the snapshot and re-encodes the
    turns; allow_other_checkpoint=True also accepts a session of another checkpoint, and
    then re-encodes its turns (another model's K/V mean nothing to this one).
    progress: called with (turns restored, turns) after every turn; an exception it
    raises stops the load (nothing is kept).
    """
    folder = Path(folder)
    manifest = read_manifest(folder, pipe, allow_other_checkpoint, check_snapshot=use_snapshot)
    if use_snapshot and "snapshot" in manifest:
        session = _load_snapshot(folder, manifest, pipe, allow_other_checkpoint)
        if session is not None:
            return session
    session, turns = Session(pipe, limit=_limit(folder, manifest)), manifest["turns"]
    for index, entry in enumerate(turns):
        with _threads_of(entry, pipe):
            _restore(session, folder, entry, index)
        if progress is not None:
            progress(index + 1, len(turns))
    return session


def replay(
    folder: str | Path,
    pipe: BagelPipeline,
    allow_other_checkpoint: bool = False,
    report: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> ReplayReport:
    """Re-run a saved session's turns with their seeds; compare every generated output,
    and write the comparison as JSON to `report` (default: replay_report.json in the
    session folder; see workbench.outputs.replay_report_path for where else it may go).

    The recorded drop turns are re-applied where they happened; the replaying session
    has no context limit of its own, so it drops nothing else. progress: called with
    (turns done, turns) after every turn, and again after every denoising step and
    every decoded token (same counts), so an exception it raises stops the replay
    within one step; then no report is written."""
    folder = Path(folder)
    manifest = read_manifest(folder, pipe, allow_other_checkpoint)
    report_file = outputs.replay_report_path(folder, report)
    session, frames, texts, started = Session(pipe), [], [], time.perf_counter()
    total = len(manifest["turns"])
    for index, entry in enumerate(manifest["turns"]):
        step = None if progress is None else (lambda _d, _t, i=index: progress(i, total))
        with _threads_of(entry, pipe):
            _replay_turn(session, folder, manifest, index, entry, step, frames, texts)
        if progress is not None:
            progress(index + 1, total)
    result = ReplayReport(frames, texts, time.perf_counter() - started)
    text = result.to_json(format=outputs.REPORT_FORMAT, session=str(folder))
    write_atomic(report_file, lambda t: t.write_text(text, encoding="utf-8"))
    return result


@contextlib.contextmanager
def _threads_of(entry: dict, pipe: BagelPipeline) -> Iterator[None]:
    """Run a turn's work on as many CPU threads as it was made with: how a CPU splits
    its sums changes the last bits, and so the frames (a session made on one thread
    replays identically on a two-core machine only on one thread)."""
    threads, before = entry.get("threads"), torch.get_num_threads()
    if pipe.device.type != "cpu" or threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _replay_turn(
    session: Session,
    folder: Path,
    manifest: dict,
    index: int,
    entry: dict,
    step: ProgressFn | None,
    frames: list[FrameDiff],
    texts: list[tuple[int, bool]],
) -> None:
    """Regenerate (model turns) or re-append (the others) one turn; record the diffs."""
    params = GenerationParams(**entry["params"]) if entry["params"] else None
    forcing = entry.get("forcing")
    if forcing is not None and forcing["index"] > 0:
        return  # regenerated with the first frame of its run
    if forcing is not None:  # the frames of a run were denoised together: re-run it
        images = session.predict_frames(
            forcing["frames"], params, forcing["window"], forcing["schedule"], step
        )
        for k, image in enumerate(images):
            name = manifest["turns"][index + k]["image"]
            saved = open_turn_image(folder, name, index + k, verify=False)
            frames.append(_compare(index + k, image, saved))
    elif entry["role"] == "model" and entry["kind"] == "image":
        image = session.generate_image(params, step)
        saved = open_turn_image(folder, entry["image"], index, verify=False)
        frames.append(_compare(index, image, saved))
    elif entry["kind"] == "choice":
        answer, _ = session.answer(entry["options"])
        texts.append((index, answer == entry["text"]))
    elif entry["role"] == "model":
        reply = session.pipe.generate_text(
            session.main,
            params.max_think_tokens,
            params.do_sample,
            params.temperature,
            params.generator(),
            progress=step,
        ).text
        texts.append((index, reply == entry["text"]))
        _restore(session, folder, {**entry, "text": reply}, index)
    else:
        _restore(session, folder, entry, index)


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
    reading only, as an export does).
    """
    folder = Path(folder)
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
        if entry["kind"] == "image":
            _image_path(folder, entry["image"], index)
    _limit(folder, manifest)
    if check_snapshot and not other and "snapshot" in manifest:  # another model's: ignored
        _check_snapshot_file(folder, manifest)
    return manifest


def _limit(folder: Path, manifest: dict) -> ContextLimit:
    limit = manifest.get("context_limit", {})  # absent before version 2
    try:
        return ContextLimit(**limit)
    except (TypeError, BagelError) as err:
        raise SessionFileError(f"{folder / MANIFEST}: context_limit: {err}") from err


def _check_turn(path: Path, index: int, entry: object) -> None:
    where = f"{path}: turns[{index}]"
    if not isinstance(entry, dict):
        raise SessionFileError(f"{where} must be an object")
    role_kind = (entry.get("role"), entry.get("kind"))
    if not all(isinstance(v, str) for v in role_kind) or role_kind not in ROLES_KINDS:
        raise SessionFileError(
            f"{where}: role/kind {entry.get('role')!r}/{entry.get('kind')!r} "
            f"is not one of {sorted(ROLES_KINDS)}"
        )
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
    if entry["kind"] == "image" and not isinstance(entry.get("image"), str):
        raise SessionFileError(f"{where}.image must be a file name")
    if entry["kind"] != "image":
        try:
            check_text(entry.get("text"), blank_ok=entry["role"] != "user")
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
        scores = entry.get("scores")
        if (
            not isinstance(scores, list)
            or len(scores) != len(options)
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


def _restore(session: Session, folder: Path, entry: dict, index: int) -> None:
    """Append a recorded turn as it happened, without generating anything."""
    turn = _turn(folder, entry, index)
    if turn.kind != "drop":
        session.restore(turn)
        return
    try:
        session.restore(turn)
    except BagelError as err:
        raise SessionFileError(f"{folder / MANIFEST}: turns[{index}].dropped: {err}") from err


def _parts(entry: dict) -> tuple[tuple[int, str], ...]:
    return tuple((i, part) for i, part in entry["dropped"])


def _turn(
    folder: Path,
    entry: dict,
    index: int,
    before: tuple[Mark, Mark, Mark] | None = None,
) -> Turn:
    """A validated manifest entry as a Turn (its image read from the folder)."""
    kind = entry["kind"]
    return Turn(
        entry["role"],
        kind,
        text=entry.get("text"),
        image=open_turn_image(folder, entry["image"], index) if kind == "image" else None,
        params=GenerationParams(**entry["params"]) if entry.get("params") else None,
        seed=entry.get("seed", 0),
        seconds=entry.get("seconds", 0.0),
        before=before,
        options=tuple(entry["options"]) if kind == "choice" else None,
        scores=tuple(entry["scores"]) if kind == "choice" else None,
        dropped=_parts(entry) if kind == "drop" else (),
        forcing=Forcing(**entry["forcing"]) if "forcing" in entry else None,
        threads=entry.get("threads"),
    )


# -- K/V snapshot -------------------------------------------------------------------


def _write_snapshot(session: Session, folder: Path, turns: list[dict]) -> str:
    """Write the stored contexts' K/V to kv.safetensors (atomically); returns its sha256."""
    tensors = {}
    for name in STORED_CONTEXTS:
        ctx = getattr(session, name)
        for layer in range(ctx.layout.num_layers):
            tensors[f"k.{name}.{layer}"], tensors[f"v.{name}.{layer}"] = _rows(ctx, layer)
    ends = {name: Mark.of(getattr(session, name)) for name in STORED_CONTEXTS}
    ends["text_dropped"] = session.text_mark
    metadata = {
        "format": SNAPSHOT_FORMAT,
        "version": str(SNAPSHOT_VERSION),
        "checkpoint": str(session.pipe.identity),
        "dtype": _dtype_name(session.main.layout.dtype),
        "transcript": _transcript_digest(turns),
        "contexts": json.dumps({name: [m.length, m.rope] for name, m in ends.items()}),
        # where the three contexts stood before each turn, so rewind works after a resume
        "marks": json.dumps(
            [[n for m in turn.before for n in (m.length, m.rope)] for turn in session.turns]
        ),
    }
    path = folder / SNAPSHOT
    write_atomic(path, lambda t: save_file(tensors, str(t), metadata))
    return _sha256(path)


def _rows(ctx: KVContext, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's keys and values [Hkv, length, D], in context order, on the CPU."""
    layout = ctx.layout
    empty = torch.empty(layout.num_kv_heads, 0, layout.head_dim, dtype=layout.dtype)
    chunks = ctx.chunks(layer)
    k = torch.cat([empty, *(k.cpu() for k, _ in chunks)], dim=1)
    v = torch.cat([empty, *(v.cpu() for _, v in chunks)], dim=1)
    return k, v


def _load_snapshot(
    folder: Path, manifest: dict, pipe: BagelPipeline, allow_other_checkpoint: bool
) -> Session | None:
    """The session with its contexts read from kv.safetensors, after checking that the
    file is the one saved with these turns by this model; None where it is to be rebuilt
    from the turns instead (another checkpoint's snapshot, under allow_other_checkpoint)."""
    path = folder / SNAPSHOT
    if allow_other_checkpoint and manifest["checkpoint"] != pipe.identity:
        return None
    meta, shapes = _snapshot_header(path)
    if allow_other_checkpoint and meta.get("checkpoint") != str(pipe.identity):
        return None
    _check_snapshot_meta(path, meta, pipe)
    ends, befores = _snapshot_marks(path, meta, len(manifest["turns"]))
    _check_snapshot_tensors(path, shapes, pipe.kv_layout, ends)
    turns = []
    for i, (e, b) in enumerate(zip(manifest["turns"], befores, strict=True)):
        turn = _turn(folder, e, i, b)
        if turn.kind == "image":  # its VAE and ViT rows in main, as _append_image gives them
            vae, vit = pipe.image_token_counts(*turn.image.size)
            start = b[0].length
            turn = dataclasses.replace(
                turn, rows=((start, start + vae), (start + vae, start + vae + vit))
            )
        turns.append(turn)  # drop turns come without their undo view: no rewind across them
    contexts = {name: _read_context(path, pipe, name, ends[name].rope) for name in STORED_CONTEXTS}
    return Session(
        pipe,
        contexts["main"],
        contexts["image_dropped"],
        ends["text_dropped"],
        turns,
        _limit(folder, manifest),
    )


def _check_snapshot_file(folder: Path, manifest: dict) -> None:
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
    if _sha256(path) != entry["sha256"]:
        raise SessionFileError(
            f"{path}: sha256 differs from the one {MANIFEST} records (the file was changed, "
            f"cut short, or left by another save){USE_TURNS}"
        )
    meta, _ = _snapshot_header(path)
    if meta.get("transcript") != _transcript_digest(manifest["turns"]):
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


def _snapshot_header(path: Path) -> tuple[dict, dict[str, list[int]]]:
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


def _check_snapshot_meta(path: Path, meta: dict, pipe: BagelPipeline) -> None:
    """Format, model and dtype of a snapshot, from its header metadata (its transcript was
    checked by read_manifest)."""
    if meta.get("format") != SNAPSHOT_FORMAT or meta.get("version") != str(SNAPSHOT_VERSION):
        raise SessionFileError(
            f"{path}: not a {SNAPSHOT_FORMAT} version {SNAPSHOT_VERSION} snapshot (metadata "
            f"format {meta.get('format')!r}, version {meta.get('version')!r}){USE_TURNS}"
        )
    if meta.get("checkpoint") != str(pipe.identity):
        raise SessionFileError(
            f"{path}: made with checkpoint {meta.get('checkpoint')}, but the loaded model is "
            f"{pipe.identity}{USE_TURNS} (or allow_other_checkpoint=True)"
        )
    dtype = _dtype_name(pipe.kv_layout.dtype)
    if meta.get("dtype") != dtype:
        raise SessionFileError(
            f"{path}: K/V stored in {meta.get('dtype')}, but the loaded model runs in "
            f"{dtype}{USE_TURNS}"
        )


def _snapshot_marks(
    path: Path, meta: dict, num_turns: int
) -> tuple[dict[str, Mark], list[tuple[Mark, Mark, Mark]]]:
    """The contexts' final marks and, per turn, where they stood before it."""
    try:
        contexts = json.loads(meta["contexts"])
        ends = {n: _mark(contexts[n]) for n in (*STORED_CONTEXTS, "text_dropped")}
        befores = []
        for row in json.loads(meta["marks"]):
            if not isinstance(row, list) or len(row) != 6:
                raise ValueError(f"a turn's marks must be 6 integers, got {row!r}")
            befores.append((_mark(row[0:2]), _mark(row[2:4]), _mark(row[4:6])))
    except (KeyError, TypeError, ValueError) as err:
        raise SessionFileError(
            f"{path}: metadata 'contexts' / 'marks' malformed ({err!r}){USE_TURNS}"
        ) from err
    if len(befores) != num_turns:
        raise SessionFileError(
            f"{path}: marks for {len(befores)} turns, {MANIFEST} has {num_turns}{USE_TURNS}"
        )
    main, image = ends["main"], ends["image_dropped"]
    checks = [("text-dropped context", ends["text_dropped"], main)]  # a prefix of main
    for index, before in enumerate(befores):
        for what, mark, end in zip(
            ("main", "text-dropped", "image-dropped"), before, (main, main, image), strict=True
        ):
            checks.append((f"turn {index}'s {what} mark", mark, end))
    for what, mark, end in checks:
        if mark.length > end.length or mark.rope > end.rope:
            raise SessionFileError(
                f"{path}: {what} {mark} lies past its context's end {end}{USE_TURNS}"
            )
    return ends, befores


def _mark(pair: object) -> Mark:
    if not (
        isinstance(pair, list)
        and len(pair) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in pair)
    ):
        raise ValueError(f"expected [length, rope] (two integers >= 0), got {pair!r}")
    return Mark(*pair)


def _check_snapshot_tensors(
    path: Path, shapes: dict[str, list[int]], layout, ends: dict[str, Mark]
) -> None:
    """Every layer of both stored contexts, each [Hkv, its length, D]; nothing else."""
    expected = {
        f"{kv}.{name}.{layer}": [layout.num_kv_heads, ends[name].length, layout.head_dim]
        for name in STORED_CONTEXTS
        for layer in range(layout.num_layers)
        for kv in "kv"
    }
    missing, extra = sorted(expected.keys() - shapes.keys()), sorted(shapes.keys() - expected)
    if missing or extra:
        raise SessionFileError(
            f"{path}: tensors do not match this model's {layout.num_layers} layers (missing "
            f"{missing[:4]}, unexpected {extra[:4]}){USE_TURNS}"
        )
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise SessionFileError(
                f"{path}: tensor {name} has shape {shapes[name]}, expected {shape} "
                f"(kv heads, tokens, head dim){USE_TURNS}"
            )


def _read_context(path: Path, pipe: BagelPipeline, name: str, rope: int) -> KVContext:
    """One stored context, onto the pipeline's KV devices."""
    layers = range(pipe.kv_layout.num_layers)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            ks = [f.get_tensor(f"k.{name}.{layer}") for layer in layers]
            vs = [f.get_tensor(f"v.{name}.{layer}") for layer in layers]
        return KVContext.from_tensors(pipe.kv_layout, ks, vs, rope)
    except (SafetensorError, OSError, ValueError) as err:
        raise SessionFileError(f"{path}: context {name}: {err}{USE_TURNS}") from err


def _transcript_digest(turns: list) -> str:
    """sha256 of the manifest's turns list, as canonical JSON."""
    text = json.dumps(turns, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
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
            f"{folder / MANIFEST}: turns[{index}].image {name!r}: its pixels do not match "
            "the digest in its name (the file was replaced or edited)"
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


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()

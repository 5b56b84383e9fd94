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

The format's names, versions and checks are in workbench/store/session_format.py, the K/V
snapshot in workbench/store/kv_snapshot.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import workbench
from bagel.errors import BagelError
from bagel.inputs import ProgressFn
from bagel.pipeline import BagelPipeline
from workbench import outputs
from workbench.files import write_atomic
from workbench.metrics import frame_metrics, psnr
from workbench.params import GenerationParams
from workbench.session import Session
from workbench.store.kv_snapshot import read_snapshot, write_snapshot
from workbench.store.replay_report import FrameDiff, ReplayReport
from workbench.store.session_format import (
    FORMAT,
    MANIFEST,
    SNAPSHOT,
    USE_TURNS,
    VERSION,
    SessionFileError,
    check_snapshot_file,
    context_limit,
    dtype_name,
    open_turn_image,
    read_manifest,
    snapshot_header,
)
from workbench.transcript import Forcing, Mark, Turn

log = logging.getLogger(__name__)


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
        "dtype": dtype_name(pipe.net.dtype),
        "profile": pipe.profile,  # how the weights were held (int8 / nf4 change the outputs)
        "device": pipe.device.type,
        "context_limit": dataclasses.asdict(session.limit),
        "turns": turns,
    }
    if snapshot:
        manifest["snapshot"] = {"file": SNAPSHOT, "sha256": write_snapshot(session, folder, turns)}
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
    session, turns = Session(pipe, limit=context_limit(folder, manifest)), manifest["turns"]
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
    manifest = read_manifest(folder, pipe, allow_other_checkpoint, check_snapshot=False)
    _warn_if_stale(folder, manifest)
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


def _warn_if_stale(folder: Path, manifest: dict) -> None:
    """A replay regenerates every turn and never reads the K/V snapshot, a cache: one
    that is stale, cut short, unreadable, non-finite or a link is only reported."""
    if "snapshot" not in manifest:
        return
    try:
        check_snapshot_file(folder, manifest)
    except SessionFileError as err:
        log.warning(
            "%s; the K/V snapshot is a cache, which a replay does not use: it rebuilds every turn",
            str(err).removesuffix(USE_TURNS),
        )


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


def _load_snapshot(
    folder: Path, manifest: dict, pipe: BagelPipeline, allow_other_checkpoint: bool
) -> Session | None:
    """The session with its contexts read from kv.safetensors, after checking that the
    file is the one saved with these turns by this model; None where it is to be rebuilt
    from the turns instead (another checkpoint's snapshot, under allow_other_checkpoint)."""
    path = folder / SNAPSHOT
    if allow_other_checkpoint and manifest["checkpoint"] != pipe.identity:
        return None
    meta, shapes = snapshot_header(path)
    if allow_other_checkpoint and meta.get("checkpoint") != str(pipe.identity):
        return None
    ends, befores, contexts = read_snapshot(path, meta, shapes, pipe, len(manifest["turns"]))
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
    return Session(
        pipe,
        contexts["main"],
        contexts["image_dropped"],
        ends["text_dropped"],
        turns,
        context_limit(folder, manifest),
    )


def _restore(session: Session, folder: Path, entry: dict, index: int) -> None:
    """Append a recorded turn as it happened, without generating anything."""
    turn = _turn(folder, entry, index)
    try:
        session.restore(turn)
    except BagelError as err:
        if turn.kind != "drop":  # a recorded drop of parts that are not there
            raise
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

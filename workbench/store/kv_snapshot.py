"""The optional K/V snapshot of a saved session, kv.safetensors: the main and
image-dropped contexts per layer (`k.main.0`, `v.main.0`, …, `k.image_dropped.0`, …) with
their lengths, ropes and per-turn marks in the header metadata; written by a save with
snapshot=True, read back by a load after checking it is the file saved with these turns
by this model (workbench/store/session_format.py checks the file itself).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from bagel import safejson
from bagel.kv import KVContext
from bagel.pipeline import BagelPipeline
from workbench.files import write_atomic
from workbench.session import Session
from workbench.store.session_format import (
    MANIFEST,
    SNAPSHOT,
    USE_TURNS,
    SessionFileError,
    dtype_name,
    sha256_of,
    transcript_digest,
)
from workbench.transcript import Mark

SNAPSHOT_FORMAT = "bagel-workbench-kv"
SNAPSHOT_VERSION = 1
STORED_CONTEXTS = ("main", "image_dropped")  # the text-dropped context is a mark into main


def write_snapshot(session: Session, folder: Path, turns: list[dict]) -> str:
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
        "dtype": dtype_name(session.main.layout.dtype),
        "transcript": transcript_digest(turns),
        "contexts": json.dumps({name: [m.length, m.rope] for name, m in ends.items()}),
        # where the three contexts stood before each turn, so rewind works after a resume
        "marks": json.dumps(
            [[n for m in turn.before for n in (m.length, m.rope)] for turn in session.turns]
        ),
    }
    path = folder / SNAPSHOT
    write_atomic(path, lambda t: save_file(tensors, str(t), metadata))
    return sha256_of(path)


def _rows(ctx: KVContext, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's keys and values [Hkv, length, D], in context order, on the CPU."""
    layout = ctx.layout
    empty = torch.empty(layout.num_kv_heads, 0, layout.head_dim, dtype=layout.dtype)
    chunks = ctx.chunks(layer)
    k = torch.cat([empty, *(k.cpu() for k, _ in chunks)], dim=1)
    v = torch.cat([empty, *(v.cpu() for _, v in chunks)], dim=1)
    return k, v


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
    dtype = dtype_name(pipe.kv_layout.dtype)
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
        contexts = safejson.loads(meta["contexts"])
        ends = {n: _mark(contexts[n]) for n in (*STORED_CONTEXTS, "text_dropped")}
        befores = []
        for row in safejson.loads(meta["marks"]):
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


def read_snapshot(
    path: Path, meta: dict, shapes: dict[str, list[int]], pipe: BagelPipeline, num_turns: int
) -> tuple[dict[str, Mark], list[tuple[Mark, Mark, Mark]], dict[str, KVContext]]:
    """The contexts' final marks, where they stood before each turn, and the stored
    contexts on the pipeline's KV devices, after checking the snapshot's header (`meta`,
    `shapes`: session_format.snapshot_header) against this model and these turns."""
    _check_snapshot_meta(path, meta, pipe)
    ends, befores = _snapshot_marks(path, meta, num_turns)
    _check_snapshot_tensors(path, shapes, pipe.kv_layout, ends)
    contexts = {name: _read_context(path, pipe, name, ends[name].rope) for name in STORED_CONTEXTS}
    return ends, befores, contexts

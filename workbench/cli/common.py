"""What the verbs share: the exit codes, loading the model, and Ray's cluster options."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bagel.pipeline import BagelPipeline
    from workbench.fanout import Cluster

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
RANDOM_WEIGHTS_NOTE = (
    "NOTE: this is a tiny checkpoint with RANDOM weights: its images are noise and its "
    "answers gibberish. Point --model at a real BAGEL-7B-MoT folder (or hub id, when "
    "online) for real output."
)


def load_model(
    model: str | Path | None,
    device: str,
    dtype: str | None,
    profile: str | None = None,
    compile: bool = False,
) -> BagelPipeline:
    """Load `model`; None is the tiny random checkpoint (made if missing)."""
    from bagel.checkpoint import load

    if model is None:
        model = tiny()
    how = ", ".join(x for x in (profile, "compiled" if compile else None) if x)
    print(f"loading {model} on {device}" + (f" ({how})" if how else ""), flush=True)
    started = time.perf_counter()
    pipe = load(model, device=device, dtype=dtype, profile=profile, compile=compile)
    print(f"loaded in {time.perf_counter() - started:.1f} s", flush=True)
    return pipe


def tiny() -> Path:
    """The tiny random checkpoint, made if missing, with the note that its output is noise."""
    from workbench.models import tiny_checkpoint

    folder = tiny_checkpoint(say=lambda line: print(line, flush=True))
    print(RANDOM_WEIGHTS_NOTE, flush=True)
    return folder


def model_path(model: str | None) -> str:
    """What a Ray replica loads: an existing folder made absolute (replicas may start in
    another folder), a hub id as given, the tiny default made here first."""
    path = tiny() if model is None else Path(model)
    return str(path.resolve()) if path.exists() else str(model)


def cluster(args: argparse.Namespace, device: str) -> Cluster:
    """The Ray cluster of --ray / --actors / --cpus-per-actor."""
    from workbench.fanout import Cluster, import_ray

    import_ray()  # a clear error before any work when Ray is missing
    address = None if args.ray == "local" else args.ray
    return Cluster(address, args.actors, args.cpus_per_actor, device)

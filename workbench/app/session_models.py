"""Which model a saved branch or session needs, and whether loading it is a large load.

A saved session records the identity of the checkpoint it was made with (a hash of its
configs and weight headers, `bagel.checkpoint.checkpoint_identity`); an autosaved branch
also records what its model was loaded from (`Branch.model`). The app opens a saved
session on its own model when it knows that model: the one recorded, the one the app
was started with, the tiny default or the shipped world model, whichever has the
session's identity. Only a session of a model it cannot find is rebuilt on another
model, and only when the user asks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from bagel.checkpoint import checkpoint_identity
from bagel.errors import BagelError
from workbench.models import DEFAULT_TINY
from workbench.store import session_format
from workbench.world.model import default_world_model

log = logging.getLogger(__name__)

LARGE_LOAD_BYTES = 1 << 30  # a model whose weights are larger is loaded only when asked


def folder_of(spec: str) -> Path | None:
    """The local folder a model spec names ("" the tiny default); None for a hub id."""
    if not spec:
        return DEFAULT_TINY
    path = Path(spec).expanduser()
    return path if path.is_dir() else None


def identity_of(spec: str) -> str | None:
    """The checkpoint identity of a local model; None when it cannot be read here."""
    folder = folder_of(spec)
    if folder is None or not folder.is_dir():
        return None
    try:
        return checkpoint_identity(folder)
    except (BagelError, OSError, ValueError) as err:
        log.info("no identity for %s: %s", folder, err)
        return None


def saved_identity(folder: Path) -> str | None:
    """The checkpoint identity a saved session records (None when it has none)."""
    manifest = session_format.read_manifest(folder, None, allow_other_checkpoint=True)
    checkpoint = manifest.get("checkpoint")
    return checkpoint if isinstance(checkpoint, str) else None


def known_models(asked: str) -> list[str]:
    """The models this app can load by itself: the one it was started with (`asked`),
    the tiny default and the shipped world model."""
    world = default_world_model()
    specs = [asked, "", str(world) if world is not None else None]
    return list(dict.fromkeys(s for s in specs if s is not None))


def model_for(
    identity: str | None,
    recorded: str | None,
    candidates: Iterable[str],
    loaded: dict[str, str | None] | None = None,
) -> str | None:
    """The model spec whose checkpoint has `identity`: the recorded one first, then the
    loaded models ({spec: identity}), then `candidates`. A recorded model that cannot be
    checked here (a hub id) is trusted; None when no model is found."""
    loaded = loaded or {}
    if recorded is not None:
        have = loaded.get(recorded) or identity_of(recorded)
        if identity is None or have == identity or (have is None and folder_of(recorded) is None):
            return recorded
    if identity is None:
        return None
    for spec, have in loaded.items():
        if have == identity:
            return spec
    for spec in candidates:
        if spec not in loaded and identity_of(spec) == identity:
            return spec
    return None


def load_bytes(spec: str) -> int | None:
    """The size of a local model's weight files; None for a hub id (unknown here)."""
    folder = folder_of(spec)
    if folder is None:
        return None
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors") if p.is_file())


def is_large(spec: str) -> bool:
    """Whether loading `spec` deserves a question first (big, or of unknown size)."""
    size = load_bytes(spec)
    return size is None or size > LARGE_LOAD_BYTES


def describe(spec: str) -> str:
    """A model's name for people: "the tiny default", "the world model (models/world-64)",
    or its folder or hub id."""
    if not spec:
        return "the tiny default model"
    world = default_world_model()
    if world is not None and Path(spec) == world:
        return f"the world model ({spec})"
    return f"the model {spec}"

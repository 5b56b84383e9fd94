"""Which checkpoint runs when none is named: a tiny one with random weights, made on first
use in DEFAULT_TINY. The command line and the browser app both serve it by default."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

DEFAULT_TINY = Path(".cache/tiny-bagel")


def tiny_checkpoint(say: Callable[[str], None] | None = None) -> Path:
    """DEFAULT_TINY, made first when a file of it is missing (`say` hears that it is)."""
    from bagel.checkpoint import REQUIRED_FILES
    from bagel.tiny import make_tiny

    if not all((DEFAULT_TINY / name).is_file() for name in REQUIRED_FILES):
        if say is not None:
            say(f"making a tiny random checkpoint in {DEFAULT_TINY}")
        make_tiny(DEFAULT_TINY)
    return DEFAULT_TINY

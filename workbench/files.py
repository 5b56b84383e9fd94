"""Atomic file writes: a file appears complete or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """write(tmp) fills a temporary file beside `path` (same suffix, so writers that go by
    the extension work), which then replaces `path` in one rename."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.chmod(0o644)  # mkstemp makes it private; session files and exports are shared
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

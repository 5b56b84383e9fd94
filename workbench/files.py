"""File safety: atomic writes (a file appears complete or not at all) and the check that
every reader makes before opening a file a user named."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from bagel.errors import InputError


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


def check_regular_file(path: Path, root: Path | None = None, max_bytes: int | None = None) -> int:
    """Refuse `path` unless it is a regular file (no link followed, no FIFO, device or folder)
    lying inside `root` when given, of at most `max_bytes`; return its size in bytes.

    Checked with lstat before anything opens the file, so a FIFO cannot block the reader
    and a link cannot lead it outside the folder."""
    path = Path(path)
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror})") from None
    if stat.S_ISLNK(info.st_mode):
        target = os.path.realpath(path)
        if root is not None and not _inside(Path(target), Path(root)):
            raise InputError(f"{path}: a symbolic link that leaves the folder {root}")
        raise InputError(f"{path}: a symbolic link (give the file it points to: {target})")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: not a regular file ({_kind(info.st_mode)})")
    if root is not None and not _inside(path, Path(root)):
        raise InputError(f"{path}: lies outside the folder {root}")
    if max_bytes is not None and info.st_size > max_bytes:
        raise InputError(f"{path}: {info.st_size} bytes, more than the {max_bytes} allowed")
    return info.st_size


def _inside(path: Path, root: Path) -> bool:
    """Whether path (its parent folders resolved, the name itself not followed) is in root."""
    parent = Path(os.path.realpath(path.parent))
    return (parent / path.name).is_relative_to(os.path.realpath(root))


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "a folder",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    return next((name for test, name in kinds.items() if test(mode)), "a special file")

"""Files that cross the browser: uploaded images and session archives, saved sessions on
the server, downloads.

Everything a user sends is checked before it is used: sizes first, then decoding (an
image through bagel.image), then paths (an archive member may not leave its folder).
Failures raise `UploadError` (a BagelError) with a message for the page to show.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from PIL import Image

from bagel.errors import BagelError
from bagel.pipeline import BagelPipeline
from workbench import outputs, store
from workbench.session import Session
from workbench.store import session_format

MB = 1024 * 1024
MAX_IMAGE_MB = 20  # an uploaded image (also the uploader widget's limit)
MAX_ARCHIVE_MB = 200  # an uploaded session archive, compressed
MAX_UNPACKED_BYTES = 1024 * MB  # ... and unpacked (a zip bomb stops here)
MAX_ARCHIVE_FILES = 10_000
IMAGE_TYPES = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")
SESSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DOWNLOADS = {  # what -> (file name, mime type)
    "frames": ("frames.zip", "application/zip"),
    "gif": ("frames.gif", "image/gif"),
    "mp4": ("frames.mp4", "video/mp4"),
    "sheet": ("contact_sheet.png", "image/png"),
    "story": ("story.html", "text/html"),
    "session": ("session.zip", "application/zip"),
}


class UploadError(BagelError):
    """An uploaded file is too large, unreadable or unsafe."""


# -- images ---------------------------------------------------------------------------


def read_image(name: str, data: bytes, pipe: BagelPipeline) -> Image.Image:
    """An uploaded image, decoded and brought to a size the model takes (the VAE rule)."""
    if len(data) > MAX_IMAGE_MB * MB:
        raise UploadError(f"{name}: {len(data) / MB:.1f} MB is over the {MAX_IMAGE_MB} MB limit")
    try:
        return pipe.prepare_image(bytes(data))
    except BagelError as err:  # ImageError: unreadable, truncated, too many pixels, ...
        raise UploadError(f"{name}: {_without_label(str(err))}") from err


def _without_label(message: str) -> str:
    return message.removeprefix("<bytes>: ")


# -- session archives -----------------------------------------------------------------


def pack_folder(folder: Path) -> bytes:
    """A zip of every file under folder (relative names; hidden temporary files left out)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if path.is_file() and not any(p.startswith(".") for p in relative.parts):
                archive.write(path, relative.as_posix())
    return buffer.getvalue()


def unpack_session(name: str, data: bytes, dest: Path) -> Path:
    """Check a session archive and unpack it into the new folder `dest`.

    The archive holds session.json (at its root or in one top folder), images/ and
    perhaps the K/V snapshot kv.safetensors. Refused:
    archives over the size limits, members with absolute paths, `..`, backslashes or
    links, and archives without session.json. Other files are skipped.
    """
    if len(data) > MAX_ARCHIVE_MB * MB:
        raise UploadError(f"{name}: {len(data) / MB:.1f} MB is over the {MAX_ARCHIVE_MB} MB limit")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as err:
        raise UploadError(f"{name}: not a zip archive ({err})") from err
    with archive:
        members = _check_members(name, archive)
        if dest.exists():
            raise UploadError(f"{dest}: already exists")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
        try:
            _extract(name, archive, members, tmp)
            try:  # a manifest that cannot be read never lands in the sessions folder
                session_format.read_manifest(tmp, None, allow_other_checkpoint=True)
            except BagelError as err:
                raise UploadError(f"{name}: {str(err).replace(str(tmp), dest.name)}") from err
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return dest


def _check_members(name: str, archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """{path inside the session folder: member} for the members to extract."""
    infos = archive.infolist()
    if len(infos) > MAX_ARCHIVE_FILES:
        raise UploadError(f"{name}: {len(infos)} entries, over the limit of {MAX_ARCHIVE_FILES}")
    for info in infos:
        path = PurePosixPath(info.filename)
        mode = info.external_attr >> 16
        if (
            "\\" in info.filename
            or path.is_absolute()
            or ".." in path.parts
            or (path.parts and ":" in path.parts[0])
        ):
            raise UploadError(f"{name}: unsafe path {info.filename!r} in the archive")
        if stat.S_ISLNK(mode):
            raise UploadError(f"{name}: {info.filename!r} is a link; links are not accepted")
        if info.flag_bits & 0x1:  # needs a password to read
            raise UploadError(
                f"{name}: {info.filename!r} is encrypted; save the session again without a password"
            )
    files = [i for i in infos if not i.is_dir()]
    manifests = [
        i.filename for i in files if PurePosixPath(i.filename).name == session_format.MANIFEST
    ]
    roots = {str(PurePosixPath(m).parent) for m in manifests}
    if len(roots) != 1 or len(PurePosixPath(next(iter(roots))).parts) > 1:
        raise UploadError(
            f"{name}: expected one {session_format.MANIFEST} at the top of the archive "
            f"(or in one top folder), found {len(manifests)}"
        )
    root = PurePosixPath(next(iter(roots)))
    if sum(i.file_size for i in files) > MAX_UNPACKED_BYTES:
        raise UploadError(f"{name}: unpacks to more than {MAX_UNPACKED_BYTES // MB} MB")
    picked = {}
    for info in files:
        parts = PurePosixPath(info.filename).parts
        if parts[: len(root.parts)] != root.parts:
            continue
        inside = parts[len(root.parts) :]
        if inside in ((session_format.MANIFEST,), (session_format.SNAPSHOT,)) or (
            len(inside) == 2 and inside[0] == "images"
        ):
            picked["/".join(inside)] = info
    return picked


def _extract(
    name: str, archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], folder: Path
) -> None:
    """Copy the members out, counting the bytes actually written (headers can lie)."""
    written = 0
    for relative, info in members.items():
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with archive.open(info) as source, open(target, "wb") as out:
                while chunk := source.read(MB):
                    written += len(chunk)
                    if written > MAX_UNPACKED_BYTES:
                        raise UploadError(
                            f"{name}: unpacks to more than {MAX_UNPACKED_BYTES // MB} MB"
                        )
                    out.write(chunk)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as err:
            raise UploadError(
                f"{name}: {info.filename!r} cannot be read, the archive is damaged ({err})"
            ) from err


# -- saved sessions on the server -----------------------------------------------------


def saved_sessions(root: Path) -> list[Path]:
    """Session folders under root (those with a manifest), newest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / session_format.MANIFEST).is_file()]
    return sorted(found, key=lambda p: (p / session_format.MANIFEST).stat().st_mtime, reverse=True)


def check_name(name: str) -> str:
    name = name.strip()
    if not SESSION_NAME.fullmatch(name):
        raise UploadError(
            f"session name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def save_session(session: Session, root: Path, name: str, overwrite: bool = False) -> Path:
    """Save into root/name: written beside, then renamed into place (an older save of
    that name is replaced only with `overwrite`, and only a saved session: never a link,
    a file or another folder; see workbench.outputs)."""
    folder = outputs.check_target(root / check_name(name))
    if folder.exists() and not overwrite:
        raise UploadError(f"{folder}: a saved session of that name exists; tick overwrite")
    if (
        folder.exists()
        and not (folder / session_format.MANIFEST).is_file()
        and any(folder.iterdir())
    ):
        raise UploadError(f"{folder}: holds something else than a saved session; choose a name")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}."))
    try:
        store.save(session, tmp)
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}.old."))
            os.replace(folder, old / folder.name)
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def _saved_folder(root: Path, name: str) -> Path:
    """root/name, a saved session (its manifest there), named as a save would name it."""
    folder = root / check_name(name)
    if not (folder / session_format.MANIFEST).is_file() or folder.is_symlink():
        raise UploadError(f"{folder}: no saved session of that name")
    return folder


def rename_session(root: Path, name: str, new_name: str) -> Path:
    """Rename the saved session root/name to root/new_name (which must not exist)."""
    folder = _saved_folder(root, name)
    target = root / check_name(new_name)
    if target.exists() or target.is_symlink():
        raise UploadError(f"{target}: a saved session of that name exists")
    os.replace(folder, target)
    return target


def delete_session(root: Path, name: str) -> None:
    """Remove the saved session root/name (only a folder holding a session manifest)."""
    shutil.rmtree(_saved_folder(root, name))


def unique_folder(root: Path, stem: str) -> Path:
    """root/stem, or root/stem-2, -3, ... whichever does not exist yet."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip(".-_")[:48] or "session"
    folder, n = root / stem, 2
    while folder.exists():
        folder, n = root / f"{stem}-{n}", n + 1
    return folder

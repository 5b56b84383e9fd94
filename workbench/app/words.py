"""Messages for the people using the app: what happened and what to do, in words.

The library's errors name files, fields and arguments precisely (`session.json:
turns[3].image`, `allow_other_checkpoint`, a checkpoint's hash): right for a log or a
bug report, not for a page. `for_people` turns an error into a sentence for the page
and keeps the precise text as its details (logged, and shown folded under the message).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from bagel.errors import BagelError
from workbench.store.session_format import SessionFileError

log = logging.getLogger(__name__)

HASH = re.compile(r"\b[0-9a-f]{16,}\b")
JSON_PATH = re.compile(r"\b[A-Za-z_]+\[\d+\](?:\.[A-Za-z_]+|\[\d+\])*")
ARGUMENTS = ("allow_other_checkpoint", "use_snapshot")
OTHER_MODEL = "saved with checkpoint"


@dataclass(frozen=True)
class Message:
    text: str  # for the page
    details: str | None = None  # the precise text: the log, and a folded box on the page


def technical(text: str) -> bool:
    """Whether a text speaks to developers: a hash, a JSON path or an argument name."""
    return bool(HASH.search(text) or JSON_PATH.search(text)) or any(a in text for a in ARGUMENTS)


def for_people(what: str, error: BaseException | str) -> Message:
    """`what` (e.g. "Opening world.zip") failed with `error`: a message for the page."""
    raw = str(error)
    kind = type(error) if isinstance(error, BaseException) else None
    details = f"{kind.__name__}: {raw}" if kind is not None else raw
    if OTHER_MODEL in raw:
        text = (
            f"{what} failed: it was made with another model than the one it was opened on. "
            "Open it from the Sessions page, which loads its own model when the app has it, "
            "or tick **Rebuild on the model in use** there."
        )
    elif kind is SessionFileError or (kind is None and "session.json" in raw):
        text = (
            f"{what} failed: a file of the saved session is missing, damaged or was "
            "changed by hand, so it cannot be rebuilt as it was. Open another copy of it "
            "(the details say which file)."
        )
    elif kind is not None and not issubclass(kind, BagelError):
        text = (
            f"{what} failed: something went wrong inside the app. Try again; if it "
            "fails again, the details below belong in a bug report."
        )
    elif technical(raw):
        text = f"{what} failed: {_plain(raw)}"
    else:
        return Message(f"{what} failed: {raw}")
    log.info("%s failed: %s", what, details)
    return Message(text, details)


def _plain(text: str) -> str:
    """The text without hashes, JSON paths and argument names (the details keep them)."""
    text = HASH.sub("(a model)", text)
    text = JSON_PATH.sub("one of its entries", text)
    for argument in ARGUMENTS:
        text = re.sub(rf"[;,]?\s*pass {argument}[^;.]*", "", text)
        text = text.replace(argument, "the option")
    return text.strip()

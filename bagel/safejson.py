"""JSON from files a user can edit (checkpoint configs, saved sessions), parsed with bounds.

The nesting depth is counted before decoding (Python's decoder recurses, so a document
nested thousands of levels deep would end in RecursionError), and the non-standard
constants NaN, Infinity and -Infinity are refused: every number read is finite.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64  # the deepest of our own files nests 5 levels
# a JSON string (escapes included) or one bracket: brackets inside strings do not count
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class JSONLimitError(ValueError):
    """The text is not JSON within the limits; the message says where and why."""


def loads(text: str, max_depth: int = MAX_DEPTH) -> Any:
    """json.loads with the depth checked first and NaN / Infinity refused."""
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > max_depth:
                line = text.count("\n", 0, match.start()) + 1
                raise JSONLimitError(f"line {line}: nested more than {max_depth} levels deep")
        elif token in ("]", "}"):
            depth -= 1
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise JSONLimitError(f"not valid JSON ({err})") from err


def _no_constant(name: str) -> Any:
    raise JSONLimitError(f"{name} is not a JSON number (numbers must be finite)")

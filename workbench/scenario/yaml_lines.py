"""YAML with line numbers: a scenario file's plain values, and where each one stands.

PyYAML's safe loader composes the file into nodes that keep their marks; `parse` turns
them into plain values (dicts, lists, scalars) and records, for every value's place
(its keys and list indices from the top), the line it starts on (a mapping value: the
line of its key) and, for a scalar, its text as written (".inf", not inf), so that an
error found later in the plain values can name the line and the words the file holds.

Stricter than PyYAML: no tags beyond the standard ones (a `!!python/...` tag is never
constructed), no merge keys, no key given twice in one mapping (PyYAML would keep the
last), text keys only, at most MAX_DEPTH levels and MAX_NODES values (alias bombs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn

import yaml

MAX_NODES = 100_000  # YAML values after alias expansion (guards against alias bombs)
MAX_DEPTH = 32  # nesting of YAML collections (a scenario needs 6), counted before composing

Loc = tuple[str | int, ...]  # a value's place in the file: keys and list indices

_SEQ_TAG, _MAP_TAG, _MERGE_TAG = (f"tag:yaml.org,2002:{t}" for t in ("seq", "map", "merge"))


class YamlError(Exception):
    """The file is not YAML a scenario can hold: at `line` (1-based, None: unknown), at
    the value `loc` (None: the YAML text itself)."""

    def __init__(self, line: int | None, loc: Loc | None, problem: str):
        super().__init__(problem)
        self.line, self.loc, self.problem = line, loc, problem


@dataclass
class Parsed:
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    texts: dict[Loc, str] = field(default_factory=dict)  # scalars as written

    def line(self, loc: Loc) -> int:
        """The line of a place; for one the file does not hold, its nearest holder's."""
        while loc not in self.lines:
            loc = loc[:-1]
        return self.lines[loc]


def parse(text: str) -> Parsed | None:
    """The file's values with their lines; None for a file without a document."""
    loader = None
    try:
        _check_depth(text)
        loader = yaml.SafeLoader(text)
        root = loader.get_single_node()
        if root is None:
            return None
        builder = _Builder(loader)
        return Parsed(builder.build(root, ()), builder.lines, builder.texts)
    except yaml.reader.ReaderError as err:  # a character YAML does not allow in a file
        line = text.count("\n", 0, err.position) + 1
        char = chr(err.character) if isinstance(err.character, int) else str(err.character)
        problem = f"the file holds the character {char!r} (U+{ord(char):04X}), which YAML"
        raise YamlError(line, None, f"{problem} does not allow in a file") from err
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = "; ".join(p for p in (err.context, err.problem) if p)
        raise YamlError(mark.line + 1 if mark else None, None, problem) from err
    except yaml.YAMLError as err:
        raise YamlError(None, None, str(err)) from err
    finally:
        if loader is not None:
            loader.dispose()


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH from the event stream (the parser keeps an
    explicit stack; composing and building recurse, so they run only after this)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1
                raise YamlError(line, None, f"nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


class _Builder:
    """Composed nodes to plain values (scalars through the safe constructor)."""

    def __init__(self, loader: yaml.SafeLoader):
        self.loader, self.count, self.active = loader, 0, set()
        self.lines: dict[Loc, int] = {}
        self.texts: dict[Loc, str] = {}

    def build(self, node: yaml.Node, loc: Loc, key_line: int | None = None) -> Any:
        line = node.start_mark.line + 1
        self.lines[loc] = key_line or line
        self.count += 1
        if self.count > MAX_NODES:
            self.fail(line, loc, "too many values (aliases?)")
        if id(node) in self.active:
            self.fail(line, loc, "an alias refers to itself")
        if isinstance(node, yaml.ScalarNode):
            self.texts[loc] = node.value
            return self.scalar(node, loc)
        if node.tag not in (_SEQ_TAG, _MAP_TAG):  # e.g. !!python/object: never constructed
            self.fail(line, loc, f"unsupported tag {node.tag}")
        self.active.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            out: Any = [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        else:
            out = self._mapping(node, loc)
        self.active.discard(id(node))
        return out

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        items: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                self.fail(key_line, loc, "merge keys (<<) are not supported")
            is_scalar = isinstance(key_node, yaml.ScalarNode)
            key = self.scalar(key_node, loc) if is_scalar else None
            if not isinstance(key, str):
                self.fail(key_line, loc, f"keys must be text, got {key!r}")
            if key in items:  # PyYAML would silently keep the last one
                first = self.lines[(*loc, key)]
                self.fail(key_line, (*loc, key), f"duplicate key (first given on line {first})")
            items[key] = self.build(value_node, (*loc, key), key_line)
        return items

    def scalar(self, node: yaml.ScalarNode, loc: Loc) -> Any:
        """A scalar as the safe loader reads it; one it cannot read (a date such as
        2001-13-45, an integer of thousands of digits, an empty `!!int` or `!!timestamp`)
        is an error at its line (PyYAML's constructors raise plain exceptions for these)."""
        line = node.start_mark.line + 1
        try:
            return self.loader.construct_object(node)
        except yaml.YAMLError:
            raise
        except Exception as err:  # ValueError, IndexError, AttributeError, ... from PyYAML
            digits = node.value.lstrip("+-").replace("_", "")
            if digits.isdigit():
                self.fail(line, loc, f"a number of {len(digits)} digits, more than can be read")
            shown = node.value if len(node.value) <= 40 else f"{node.value[:40]}..."
            why = f" ({err})" if isinstance(err, ValueError) and "()" not in str(err) else ""
            kind = node.tag.rsplit(":", 1)[-1]
            self.fail(
                line, loc, f"cannot read {shown!r} as a YAML {kind}{why}; quote it for a text"
            )

    def fail(self, line: int, loc: Loc, problem: str) -> NoReturn:
        raise YamlError(line, loc, problem)

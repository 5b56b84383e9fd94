"""The checks every chain of workbench.chains makes before it appends a turn: its params,
lists, counts, choices, texts and format templates (`check_template`, the one rule the
chains, the scenario file's schema and the server share). Each raises InputError naming
the argument.
"""

from __future__ import annotations

import re
import string

from bagel.errors import InputError
from bagel.inputs import ProgressFn
from bagel.tokenizer import check_text
from workbench.chains.actions import ACTIONS
from workbench.params import GenerationParams, check_text_length
from workbench.session import Session

MAX_TEMPLATE_WIDTH = 100  # the widest field (or precision) a template's format spec may ask


def check_common(
    session: Session,
    params: GenerationParams | None,
    progress: ProgressFn | None,
    default: GenerationParams | None = None,
) -> GenerationParams:
    params = params if params is not None else (default or GenerationParams())
    if not isinstance(params, GenerationParams):
        raise InputError(f"params must be a GenerationParams, got {type(params).__name__}")
    if progress is not None and not callable(progress):
        raise InputError(f"progress must be callable, got {progress!r}")
    session.image_size(params)  # a bad height/width fails here, before any turn
    return params


def check_list(name: str, value: object) -> list:
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise InputError(f"{name} must be a non-empty list, got {value!r}")
    return list(value)


def check_actions(actions: object) -> list[str]:
    actions = check_list("actions", actions)
    for action in actions:
        if action not in ACTIONS:
            raise InputError(f"unknown action {action!r}; the actions are {', '.join(ACTIONS)}")
    return actions


def check_field_text(name: str, value: object) -> None:
    """A user text of a chain argument: valid Unicode, not blank, at most MAX_TEXT_CHARS."""
    check_text_length(check_text(value, name, blank_ok=False), name)


def check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise InputError(f"{name} must be True or False, got {value!r}")


def require_image(session: Session, chain: str) -> None:
    if not any(turn.image is not None for turn in session.turns):
        raise InputError(
            f"{chain} starts from an image: the session has none yet (add one with add_image)"
        )


def fill_template(what: str, template: object, needed: tuple[str, ...], **values: str) -> str:
    """`check_template`, then the template filled with `values` (bounded like any text)."""
    template = check_template(template, what, tuple(values), needed)
    try:
        filled = template.format(**values)
    except (ValueError, IndexError) as err:
        raise InputError(f"{what} is not a valid template: {err}") from err
    return check_text_length(filled, f"{what}, filled in,")


_NUMBER = re.compile(r"\d+")


def _over(digits: str) -> bool:
    """Whether a number in a format spec is over MAX_TEMPLATE_WIDTH (read without int()
    on thousands of digits, which Python refuses)."""
    digits = digits.lstrip("0")
    return len(digits) > len(str(MAX_TEMPLATE_WIDTH)) or int(digits or "0") > MAX_TEMPLATE_WIDTH


def check_template(
    template: object,
    what: str = "template",
    allowed: tuple[str, ...] = ("degrees", "axis"),
    needed: tuple[str, ...] = ("degrees",),
) -> str:
    """A format template (rotate's by default): a text whose placeholders are among
    `allowed` and include `needed`, with no format spec wider or more precise than
    MAX_TEMPLATE_WIDTH and no nested placeholder. Returns it; raises InputError.

    The one rule for templates: the chains and the scenario file's schema use it."""
    check_text_length(check_text(template, what, blank_ok=False), what)
    names = ", ".join("{" + key + "}" for key in allowed)
    try:
        parts = [(f, spec) for _, f, spec, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise InputError(f"{what} is not a valid template: {err}") from err
    unknown = {f for f, _ in parts} - set(allowed)
    if unknown:
        raise InputError(f"{what} uses unknown placeholder(s) {sorted(unknown)}; use {names}")
    missing = [key for key in needed if key not in {f for f, _ in parts}]
    if missing:
        raise InputError(f"{what} must contain {{{missing[0]}}}")
    for field, spec in parts:
        if "{" in spec:
            raise InputError(f"{what}: the format of {{{field}}} may not hold a placeholder")
        if any(_over(n) for n in _NUMBER.findall(spec)):
            raise InputError(
                f"{what}: the format of {{{field}}} asks for a width or precision over "
                f"{MAX_TEMPLATE_WIDTH}"
            )
    return template

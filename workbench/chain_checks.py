"""The checks every chain of workbench.chains makes before it appends a turn: its params,
lists, counts, choices and texts (templates: `workbench.chains.check_template`). Each
raises InputError naming the argument.
"""

from __future__ import annotations

from bagel.errors import InputError
from bagel.pipeline import ProgressFn
from bagel.tokenizer import check_text
from workbench.actions import ACTIONS
from workbench.params import GenerationParams, check_text_length
from workbench.session import Session


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

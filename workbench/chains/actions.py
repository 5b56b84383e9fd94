"""The camera actions: one table for the navigate / agent chains and the rendered world.

Each action has the instruction text the chains append (its template) and the pose
change the world (workbench/world/render.py) applies: a step along the view direction, a step
sideways, a turn of the heading, or a tilt of the view.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bagel.errors import InputError

MOVE_STEP = 0.5  # world units (a wall cell is 1 × 1) per forward / back / strafe step
TURN_DEGREES = 30.0  # heading change per turn (left is counter-clockwise, seen from above)
PITCH_LIMIT = 2  # look up / down moves the horizon one pitch step, at most 2 each way


@dataclass(frozen=True)
class Action:
    """An action's instruction text and its pose change, in the camera's frame."""

    template: str
    forward: float = 0.0  # units along the heading
    right: float = 0.0  # units to the right of the heading
    turn: float = 0.0  # degrees, positive = to the left
    pitch: int = 0  # pitch steps, positive = up


ACTION_TABLE: dict[str, Action] = {
    "forward": Action("Move the camera forward.", forward=MOVE_STEP),
    "back": Action("Move the camera back.", forward=-MOVE_STEP),
    "turn_left": Action("Turn the camera left.", turn=TURN_DEGREES),
    "turn_right": Action("Turn the camera right.", turn=-TURN_DEGREES),
    "look_up": Action("Tilt the camera up.", pitch=1),
    "look_down": Action("Tilt the camera down.", pitch=-1),
    "strafe_left": Action("Move the camera to the left without turning it.", right=-MOVE_STEP),
    "strafe_right": Action("Move the camera to the right without turning it.", right=MOVE_STEP),
}
ACTIONS = tuple(ACTION_TABLE)
DEFAULT_TEMPLATES: dict[str, str] = {name: a.template for name, a in ACTION_TABLE.items()}
MAX_PATH = 32  # moves in one path


def parse_path(text: str) -> list[str]:
    """A path typed by a person: moves separated by commas, each an action's name with
    spaces or underscores ("turn left", "turn_left"), optionally repeated ("forward x3").

    Raises InputError naming the first part that is not a move, or a path that is empty
    or longer than MAX_PATH moves."""
    moves: list[str] = []
    for part in text.split(","):
        words = part.strip().lower()
        if not words:
            continue
        match = re.fullmatch(r"(.+?)(?:\s*[x×*]\s*(\d+))?", words)
        name = re.sub(r"[\s_]+", "_", match.group(1).strip())
        count = int(match.group(2) or 1)
        if name not in ACTION_TABLE:
            known = ", ".join(a.replace("_", " ") for a in ACTIONS)
            raise InputError(f"{part.strip()!r} is not a move (moves: {known})")
        if count < 1:
            raise InputError(f"{part.strip()!r}: a move repeats at least once")
        if len(moves) + count > MAX_PATH:  # checked before the list grows
            raise InputError(f"a path holds at most {MAX_PATH} moves")
        moves += [name] * count
    if not moves:
        raise InputError("the path holds no move (write e.g. 'forward x2, turn left')")
    return moves

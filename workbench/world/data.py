"""Training and evaluation episodes drawn from the rendered world (workbench/world/render.py).

Every episode is drawn from a numpy generator, so a seed fixes it. Three kinds, each laid
out the way its chain lays out a session:

- navigation (the navigate chain): frame, action text, frame, …; the model learns the
  frame after the last action. A fifth of them are turntable episodes (the rotate
  chain): the object turns by d degrees per step, i.e. the camera orbits by −d.
- future frames (the predict chain): a fixed camera that sees a rolling ball; context
  frames, then a window of frames to predict (diffusion forcing), no text.
- captions (`Session.ask` with the caption question): a view and its caption.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from workbench.chains import AGENT_QUESTION, DONE, ROTATE_TEMPLATE
from workbench.chains.actions import ACTION_TABLE, ACTIONS
from workbench.world.render import (
    COLOUR_NAMES,
    RESOLUTION,
    TURNTABLE_CENTRE,
    World,
    caption,
    make_level,
    random_world,
    turntable_world,
)

TRAIN_LEVELS = (0, 1, 2, 3)  # the levels (seeds of make_level) the model is trained on
ROTATE_DEGREES = (30, 45, 90, -45)


@dataclass(frozen=True)
class Episode:
    """Frames [K, H, W, 3] uint8 with the texts between them: texts[i] precedes frame i
    (None: no text); captions[i] describes frame i."""

    frames: np.ndarray
    texts: tuple[str | None, ...]
    captions: tuple[str, ...]


def draw_world(
    rng: np.random.Generator, levels: tuple[int, ...] = TRAIN_LEVELS, moving: bool = True
) -> World:
    """A random start: one of `levels`, a camera pose and balls (one rolling if `moving`)."""
    level = make_level(int(rng.choice(levels)))
    return random_world(int(rng.integers(2**31)), level, moving)


def _record(worlds: list[World], texts: list[str | None], resolution: int = RESOLUTION) -> Episode:
    return Episode(
        np.stack([w.render(resolution) for w in worlds]),
        tuple(texts),
        tuple(caption(w) for w in worlds),
    )


def navigation(
    rng: np.random.Generator,
    actions: list[str],
    levels: tuple[int, ...] = TRAIN_LEVELS,
    moving: bool = True,
    resolution: int = RESOLUTION,
) -> Episode:
    """A random start in one of `levels`, then `actions` (frame 0 has no text); with
    `moving` False the balls stay where they are."""
    return walk(draw_world(rng, levels, moving), actions, resolution)


def walk(world: World, actions: list[str], resolution: int = RESOLUTION) -> Episode:
    """`world`'s view, then the view after each of `actions`."""
    worlds, texts = [world], [None]
    for action in actions:
        world = world.step(action)
        worlds.append(world)
        texts.append(ACTION_TABLE[action].template)
    return _record(worlds, texts, resolution)


def turntable(rng: np.random.Generator, degrees: float, steps: int) -> Episode:
    """The turntable object seen from a random start, turned `steps` times by `degrees`."""
    world = turntable_world(float(rng.uniform(1.6, 2.6)), float(rng.uniform(0, 360)))
    worlds, texts = [world], [None]
    text = ROTATE_TEMPLATE.format(degrees=f"{degrees:g}", axis="vertical")
    for _ in range(steps):
        world = world.orbit(-degrees, TURNTABLE_CENTRE)
        worlds.append(world)
        texts.append(text)
    return _record(worlds, texts)


def future(
    rng: np.random.Generator,
    frames: int,
    levels: tuple[int, ...] = TRAIN_LEVELS,
    resolution: int = RESOLUTION,
) -> Episode:
    """A fixed camera turned toward the rolling ball (give or take 20°), `frames` ticks."""
    world = draw_world(rng, levels)
    ball = world.balls[0]
    heading = math.atan2(ball.y - world.pose.y, ball.x - world.pose.x)
    heading += math.radians(rng.uniform(-20, 20))
    world = replace(world, pose=replace(world.pose, heading=heading % (2 * math.pi)))
    worlds = [world]
    for _ in range(frames - 1):
        world = world.step(None)
        worlds.append(world)
    return _record(worlds, [None] * frames, resolution)


def random_actions(rng: np.random.Generator, n: int) -> list[str]:
    return [str(a) for a in rng.choice(ACTIONS, size=n)]


def navigation_batch(rng: np.random.Generator, batch: int, steps: int) -> list[Episode]:
    """`batch` episodes of `steps` actions sharing their texts (so their rows align): a
    navigation script, or one in five times a turntable."""
    if rng.random() < 0.2:
        degrees = float(rng.choice(ROTATE_DEGREES))
        return [turntable(rng, degrees, steps) for _ in range(batch)]
    actions = random_actions(rng, steps)
    return [navigation(rng, actions) for _ in range(batch)]


AGENT_ACTIONS = ("forward", "turn_left", "turn_right")
AGENT_GOAL = "reach the {colour} ball"


def expert_action(world: World, ball: int = 0) -> str:
    """The agent's answer toward `world.balls[ball]`: "done" when within 1 unit and in
    view, else a turn toward it (more than 20° off), else forward."""
    target = world.balls[ball]
    dx, dy = target.x - world.pose.x, target.y - world.pose.y
    bearing = (math.degrees(math.atan2(dy, dx) - world.pose.heading) + 180) % 360 - 180
    if math.hypot(dx, dy) < 1.0 and abs(bearing) < 30:
        return DONE
    if abs(bearing) > 20:
        return "turn_left" if bearing > 0 else "turn_right"
    return "forward"


def agent_question(colour: str) -> str:
    goal = AGENT_GOAL.format(colour=colour)
    return AGENT_QUESTION.format(goal=goal, options=", ".join([*AGENT_ACTIONS, DONE]))


def agent_views(rng: np.random.Generator, batch: int) -> tuple[list[Episode], str, list[str]]:
    """Views of still worlds, one goal colour for all (so the question's tokens align):
    (episodes, question, the expert's answers). Half the views are a few expert steps
    along the way, so that "done" and forward are seen as often as turns."""
    episodes, answers = [], []
    colour_index = int(rng.integers(1, len(COLOUR_NAMES)))
    for _ in range(batch):
        world = draw_world(rng, TRAIN_LEVELS, moving=False)
        balls = list(world.balls)
        balls[0] = replace(balls[0], colour=colour_index)
        world = replace(world, balls=tuple(balls))
        for _ in range(int(rng.integers(0, 12)) if rng.random() < 0.5 else 0):
            action = expert_action(world)
            if action == DONE:
                break
            world = world.step(action)
        episodes.append(_record([world], [None]))
        answers.append(expert_action(world))
    return episodes, agent_question(COLOUR_NAMES[colour_index]), answers

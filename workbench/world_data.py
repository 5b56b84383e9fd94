"""Training and evaluation episodes drawn from the rendered world (workbench/world.py).

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

from workbench.actions import ACTION_TABLE, ACTIONS
from workbench.chains import ROTATE_TEMPLATE
from workbench.world import (
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


def _world(rng: np.random.Generator, levels: tuple[int, ...], moving: bool = True) -> World:
    level = make_level(int(rng.choice(levels)))
    return random_world(int(rng.integers(2**31)), level, moving)


def _record(worlds: list[World], texts: list[str | None]) -> Episode:
    return Episode(
        np.stack([w.render() for w in worlds]),
        tuple(texts),
        tuple(caption(w) for w in worlds),
    )


def navigation(
    rng: np.random.Generator,
    actions: list[str],
    levels: tuple[int, ...] = TRAIN_LEVELS,
    moving: bool = True,
) -> Episode:
    """A random start in one of `levels`, then `actions` (frame 0 has no text); with
    `moving` False the balls stay where they are."""
    world = _world(rng, levels, moving)
    worlds, texts = [world], [None]
    for action in actions:
        world = world.step(action)
        worlds.append(world)
        texts.append(ACTION_TABLE[action].template)
    return _record(worlds, texts)


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
    rng: np.random.Generator, frames: int, levels: tuple[int, ...] = TRAIN_LEVELS
) -> Episode:
    """A fixed camera turned toward the rolling ball (give or take 20°), `frames` ticks."""
    world = _world(rng, levels)
    ball = world.balls[0]
    heading = math.atan2(ball.y - world.pose.y, ball.x - world.pose.x)
    heading += math.radians(rng.uniform(-20, 20))
    world = replace(world, pose=replace(world.pose, heading=heading % (2 * math.pi)))
    worlds = [world]
    for _ in range(frames - 1):
        world = world.step(None)
        worlds.append(world)
    return _record(worlds, [None] * frames)


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

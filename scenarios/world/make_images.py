"""Render the world scenarios' start images (deterministic, 64 × 64, a few KB each).

    python scenarios/world/make_images.py      # rewrites scenarios/world/images/*.png

The views come from the rendered world (workbench/world/render.py), the one the world model in
models/world-64 was trained on; the evaluation (`workbench eval-world`) compares that
model's rollouts with the same renderer's truth.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from PIL import Image

from workbench.world.render import Ball, Pose, World, make_level, turntable_world

FOLDER = Path(__file__).resolve().parent / "images"


def views() -> dict[str, World]:
    level = make_level(0)
    room = World(level, Pose(2.2, 2.0, math.radians(50)))
    rolling = World(
        level,
        Pose(1.8, 5.0, math.radians(-20)),
        (Ball(4.0, 4.4, 1, vx=0.18, vy=0.05), Ball(5.5, 3.0, 3)),
    )
    goal = replace(room, balls=(Ball(3.0, 4.2, 1), Ball(5.5, 2.5, 4)))
    return {
        "room.png": room,
        "turntable.png": turntable_world(2.0, 30.0),
        "rolling_ball.png": rolling,
        "goal.png": goal,
    }


def main() -> None:
    FOLDER.mkdir(exist_ok=True)
    for name, world in views().items():
        Image.fromarray(world.render()).save(FOLDER / name, optimize=True)
        print(FOLDER / name)


if __name__ == "__main__":
    main()

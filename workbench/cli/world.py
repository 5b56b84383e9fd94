"""`workbench train-world` and `workbench eval-world`: the world model of the rendered world
(docs/world.md); the work is in workbench/world/."""

from __future__ import annotations

import argparse


def cmd_train_world(args: argparse.Namespace) -> int:
    """Train the world model from scratch on the rendered world."""
    from workbench.world.train import command

    return command(args)


def cmd_eval_world(args: argparse.Namespace) -> int:
    """Score world-model rollouts against the renderer's true frames."""
    from workbench.world.eval import command

    return command(args)

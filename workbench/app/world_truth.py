"""The rendered world's true frames beside a world model's, for the World page.

A world started from a seeded view (`start_view`) is replayed on the renderer from the
frame labels of its branch: a move is applied to the renderer (`World.step`), a
predicted frame is one tick with the camera still; a rotation has no truth in the
navigation world, so the truth stops there. Each frame is scored against its true frame
with eval-world's own figure (`world_eval.frame_scores`: PSNR capped, SSIM).
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from workbench.chains.actions import ACTIONS
from workbench.world.data import TRAIN_LEVELS
from workbench.world.eval import frame_scores
from workbench.world.render import World, make_level, random_world

PREDICTED = ("autoregressive t+", "forcing t+")  # the labels of predicted frames


def start_world(seed: int) -> World:
    """The seeded starting world: a training level (by the seed) and a free pose."""
    return random_world(seed, make_level(TRAIN_LEVELS[seed % len(TRAIN_LEVELS)]))


def start_view(seed: int) -> Image.Image:
    return Image.fromarray(start_world(seed).render())


def _event(label: str) -> str | None:
    """The renderer's step for a frame label: an action, "" (a tick, camera still), or
    None (no truth: a rotation, an image of the user's)."""
    action = label.replace(" ", "_")
    if action in ACTIONS:
        return action
    return "" if label.startswith(PREDICTED) else None


def true_frames(seed: int, labels: list[str]) -> list[Image.Image | None]:
    """The true frame of each labelled frame (labels[0]: the start view); None from the
    first frame the renderer cannot follow."""
    world = start_world(seed)
    frames: list[Image.Image | None] = [Image.fromarray(world.render())] if labels else []
    for label in labels[1:]:
        event = _event(label)
        if event is None:
            break
        world = world.step(event or None)
        frames.append(Image.fromarray(world.render()))
    return frames + [None] * (len(labels) - len(frames))


@dataclass(frozen=True)
class TruthScore:
    index: int  # the frame's place on the branch, from 0
    label: str
    psnr: float
    ssim: float


def truth_scores(
    seed: int, labels: list[str], images: list[Image.Image]
) -> tuple[list[Image.Image | None], list[TruthScore]]:
    """The true frames, and each model frame's score against its true frame (the frames
    with a truth only)."""
    truth = true_frames(seed, labels)
    scores = [
        TruthScore(i, labels[i], *frame_scores(image, true))
        for i, (image, true) in enumerate(zip(images, truth, strict=True))
        if true is not None
    ]
    return truth, scores

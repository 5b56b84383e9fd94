"""The records of a session's transcript: where the contexts stood (Mark), one turn
(Turn), a diffusion-forcing frame's place in its run (Forcing), and where each image's
tokens sit in the main context after drops (image_rows)."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from bagel.kv import KVContext
from workbench.params import GenerationParams

ImagePart = tuple[int, str]  # (turn index of an image, "vae" or "vit")


@dataclass(frozen=True)
class Mark:
    """Where a context stood: its token count and next RoPE position."""

    length: int
    rope: int

    @classmethod
    def of(cls, ctx: KVContext) -> Mark:
        return cls(ctx.length, ctx.rope)


@dataclass(frozen=True)
class Forcing:
    """Which frame of which diffusion-forcing run an image turn is (replay re-runs the
    whole run: with a window > 1 its frames were denoised together)."""

    frames: int
    window: int
    schedule: str
    index: int


@dataclass(frozen=True)
class Turn:
    """One entry of the transcript, with where the contexts stood before it."""

    role: str  # "user", "model" or "session" (a drop made by the context limit)
    kind: str  # "text", "image", "thinking", "choice" (a constrained answer) or "drop"
    text: str | None = None
    image: Image.Image | None = None
    params: GenerationParams | None = None
    seed: int = 0  # the VAE posterior sample of an image turn
    seconds: float = 0.0
    before: tuple[Mark, Mark, Mark] | None = None  # main, text-dropped, image-dropped
    options: tuple[str, ...] | None = None  # a choice turn: the allowed answers ...
    scores: tuple[float, ...] | None = None  # ... and their log-probabilities
    forcing: Forcing | None = None  # a frame of a diffusion-forcing run
    rows: tuple[tuple[int, int], tuple[int, int]] | None = None  # image: VAE, ViT rows in main
    dropped: tuple[ImagePart, ...] = ()  # drop: the image parts it removed from main
    undo: KVContext | None = field(default=None, repr=False, compare=False)  # drop: main before
    threads: int | None = None  # CPU intra-op threads it ran with (sums depend on it); GPU: None


def image_rows(turns: list[Turn]) -> dict[ImagePart, tuple[int, int]]:
    """Where each image part still in main sits now, oldest first."""
    live: dict[ImagePart, tuple[int, int]] = {}
    for index, turn in enumerate(turns):
        if turn.kind == "drop":
            cut = [live.pop(part) for part in turn.dropped]
            live = {part: _shift(rows, cut) for part, rows in live.items()}
        elif turn.rows is not None:
            live[(index, "vae")], live[(index, "vit")] = turn.rows
    return live


def _shift(rows: tuple[int, int], cut: list[tuple[int, int]]) -> tuple[int, int]:
    """Rows of a kept part after the disjoint ranges `cut` were removed from main."""
    before = sum(stop - start for start, stop in cut if stop <= rows[0])
    return rows[0] - before, rows[1] - before

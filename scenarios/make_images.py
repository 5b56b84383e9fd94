"""Draw the example scenarios' input images (deterministic, a few KB each).

    python scenarios/make_images.py          # rewrites scenarios/images/*.png

Each picture is a flat-colour sketch of 128 × 128 pixels: large enough to read, small
enough that the tiny test model takes it as is (its largest side is 128). The real model
enlarges inputs to at least 512 pixels on their short side, so they serve there too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 128
FOLDER = Path(__file__).resolve().parent / "images"


def street(d: ImageDraw.ImageDraw) -> None:
    """A street in one-point perspective: road, pavements, houses on both sides."""
    d.rectangle([0, 0, 127, 63], fill=(150, 200, 240))  # sky
    d.rectangle([0, 64, 127, 127], fill=(110, 110, 115))  # ground
    d.polygon([(52, 64), (76, 64), (127, 127), (0, 127)], fill=(70, 70, 75))  # road
    d.line([(64, 66), (64, 127)], fill=(240, 220, 80), width=2)  # centre line
    for x0, x1, top, colour in ((0, 30, 30, (190, 90, 70)), (30, 50, 44, (220, 190, 140))):
        d.rectangle([x0, top, x1, 70], fill=colour)
        d.polygon([(x0, top), ((x0 + x1) // 2, top - 10), (x1, top)], fill=(120, 50, 40))
        d.rectangle([x0 + 5, top + 8, x0 + 11, top + 14], fill=(250, 240, 170))
    for x0, x1, top, colour in ((78, 98, 44, (140, 170, 200)), (98, 127, 30, (230, 230, 220))):
        d.rectangle([x0, top, x1, 70], fill=colour)
        d.polygon([(x0, top), ((x0 + x1) // 2, top - 10), (x1, top)], fill=(80, 80, 90))
        d.rectangle([x1 - 11, top + 8, x1 - 5, top + 14], fill=(250, 240, 170))
    d.ellipse([100, 4, 116, 20], fill=(255, 240, 150))  # sun


def vase_on_table(d: ImageDraw.ImageDraw) -> None:
    """A striped vase on a round wooden table against a plain wall."""
    d.rectangle([0, 0, 127, 127], fill=(225, 220, 205))
    d.rectangle([0, 96, 127, 127], fill=(170, 150, 120))  # floor
    d.ellipse([14, 78, 114, 100], fill=(140, 90, 50))  # table top
    d.rectangle([60, 92, 68, 124], fill=(110, 70, 40))  # leg
    d.ellipse([46, 40, 82, 86], fill=(40, 90, 170))  # vase body
    d.rectangle([56, 26, 72, 48], fill=(40, 90, 170))  # neck
    for y in (52, 62, 72):
        d.line([(50, y), (78, y)], fill=(240, 240, 240), width=3)


def rolling_ball(d: ImageDraw.ImageDraw) -> None:
    """A red ball at the top of a ramp, about to roll down to the right."""
    d.rectangle([0, 0, 127, 127], fill=(235, 235, 240))
    d.polygon([(0, 60), (127, 112), (127, 127), (0, 127)], fill=(120, 160, 90))  # ramp
    d.ellipse([12, 38, 32, 58], fill=(210, 40, 40))
    d.ellipse([17, 42, 22, 47], fill=(250, 160, 160))  # highlight


def key(d: ImageDraw.ImageDraw) -> None:
    """A golden key on a dark cloth: an object for a story beat."""
    d.rectangle([0, 0, 127, 127], fill=(40, 30, 60))
    d.ellipse([20, 48, 52, 80], outline=(230, 190, 60), width=6)  # bow
    d.rectangle([50, 60, 110, 68], fill=(230, 190, 60))  # shaft
    d.rectangle([92, 68, 98, 80], fill=(230, 190, 60))  # bit
    d.rectangle([102, 68, 108, 76], fill=(230, 190, 60))


def cottage(d: ImageDraw.ImageDraw) -> None:
    """A cottage with a garden on a summer day."""
    d.rectangle([0, 0, 127, 79], fill=(140, 195, 240))
    d.rectangle([0, 80, 127, 127], fill=(90, 170, 70))
    d.rectangle([34, 52, 94, 96], fill=(240, 225, 190))  # walls
    d.polygon([(28, 54), (64, 24), (100, 54)], fill=(170, 60, 50))  # roof
    d.rectangle([58, 72, 70, 96], fill=(110, 70, 40))  # door
    d.rectangle([40, 62, 52, 72], fill=(120, 180, 230))
    d.rectangle([76, 62, 88, 72], fill=(120, 180, 230))
    for x in (8, 108):  # trees
        d.rectangle([x + 4, 84, x + 8, 104], fill=(100, 70, 40))
        d.ellipse([x - 4, 64, x + 16, 88], fill=(40, 120, 50))


def corridor_door(d: ImageDraw.ImageDraw) -> None:
    """A corridor seen from inside, a red door at its far end."""
    d.rectangle([0, 0, 127, 127], fill=(200, 195, 185))
    d.polygon([(0, 0), (44, 40), (44, 88), (0, 127)], fill=(170, 165, 155))  # left wall
    d.polygon([(127, 0), (84, 40), (84, 88), (127, 127)], fill=(180, 175, 165))  # right wall
    d.polygon([(0, 127), (44, 88), (84, 88), (127, 127)], fill=(120, 100, 80))  # floor
    d.rectangle([56, 54, 72, 88], fill=(200, 30, 30))  # the door
    d.ellipse([68, 70, 71, 73], fill=(240, 210, 90))


IMAGES: dict[str, Callable[[ImageDraw.ImageDraw], None]] = {
    "street.png": street,
    "vase_on_table.png": vase_on_table,
    "rolling_ball.png": rolling_ball,
    "key.png": key,
    "cottage.png": cottage,
    "corridor_door.png": corridor_door,
}


def draw(name: str) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE))
    IMAGES[name](ImageDraw.Draw(image))
    return image


def main() -> None:
    FOLDER.mkdir(exist_ok=True)
    for name in IMAGES:
        draw(name).save(FOLDER / name, optimize=True)
        print(FOLDER / name)


if __name__ == "__main__":
    main()

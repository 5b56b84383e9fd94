"""A line plot of per-step curves drawn with PIL (no plotting library needed)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

SIZE = (720, 420)
MARGIN = (60, 20, 230, 40)  # left, top, right (legend), bottom
COLOURS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def plot_curves(curves: dict[str, list[float]], path: Path, ylabel: str = "PSNR (dB)") -> None:
    """One line per curve, value against step 1, 2, …; a legend on the right; PNG."""
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = MARGIN
    x0, y0, x1, y1 = left, top, SIZE[0] - right, SIZE[1] - bottom
    finite = [v for c in curves.values() for v in c if v == v and abs(v) != float("inf")]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    lo, hi = lo - 0.5, hi + 0.5
    steps = max(len(c) for c in curves.values())

    def at(step: int, value: float) -> tuple[float, float]:
        x = x0 + (x1 - x0) * (step - 1) / max(steps - 1, 1)
        return x, y1 - (y1 - y0) * (min(max(value, lo), hi) - lo) / (hi - lo)

    draw.rectangle((x0, y0, x1, y1), outline="black")
    for k in range(5):
        value = lo + (hi - lo) * k / 4
        y = at(1, value)[1]
        draw.line((x0 - 4, y, x0, y), fill="black")
        draw.text((4, y - 6), f"{value:.1f}", fill="black")
    for step in range(1, steps + 1):
        x = at(step, lo)[0]
        draw.line((x, y1, x, y1 + 4), fill="black")
        draw.text((x - 3, y1 + 6), str(step), fill="black")
    draw.text(((x0 + x1) / 2 - 40, SIZE[1] - 16), "rollout step", fill="black")
    draw.text((4, 2), ylabel, fill="black")
    for i, (name, values) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = [at(k + 1, v) for k, v in enumerate(values)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        ly = y0 + 16 * i
        draw.line((x1 + 10, ly + 6, x1 + 30, ly + 6), fill=colour, width=3)
        draw.text((x1 + 36, ly), name, fill="black")
    image.save(path, format="PNG")

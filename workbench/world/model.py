"""Which checkpoints are world models: the rule is a `world.json` beside the weights.

`workbench train-world` writes it at every save; a folder without it is any other
checkpoint. The file says what the model was trained on (the rendered world of
workbench/world/render.py, its resolution and training levels), so that the app can render the
true frames for a world started from a seeded view.
"""

from __future__ import annotations

import json
from pathlib import Path

from workbench.files import write_atomic
from workbench.world.data import TRAIN_LEVELS
from workbench.world.eval import WORLD_MODEL
from workbench.world.render import RESOLUTION

WORLD_MARKER = "world.json"


def is_world_model(folder: str | Path) -> bool:
    """A local checkpoint folder holding the world-model marker."""
    return Path(folder, WORLD_MARKER).is_file()


def write_marker(folder: str | Path) -> Path:
    """Mark `folder` as a world model of the rendered world."""
    path = Path(folder, WORLD_MARKER)
    info = {
        "world": "workbench.world.render",
        "resolution": RESOLUTION,
        "levels": list(TRAIN_LEVELS),
    }
    text = json.dumps(info, indent=2) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))
    return path


def default_world_model() -> Path | None:
    """The shipped world model (models/world-64) when it is present and marked."""
    return WORLD_MODEL if is_world_model(WORLD_MODEL) else None

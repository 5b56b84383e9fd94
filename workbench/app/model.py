"""Which model the app serves, and loading it (once per process: the page caches it).

    streamlit run streamlit_app.py -- --model PATH_OR_HUB_ID --device cuda --sessions DIR \
        --threads N

Without --model (or $WORKBENCH_MODEL) the app serves the embedded tiny default, a
checkpoint with random weights made on first use in .cache/tiny-bagel; the World page
serves the world model (models/world-64) instead when it is present.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bagel.checkpoint import load
from bagel.config import BagelConfig
from bagel.pipeline import BagelPipeline
from bagel.profiles import PROFILES
from workbench.app.jobs import Gate
from workbench.models import DEFAULT_TINY
from workbench.threads import default_threads
from workbench.world.model import default_world_model, is_world_model

DEVICES = ("auto", "cpu", "cuda")
PROFILE_CHOICES = ("default", *PROFILES)  # "default": fp32 on CPU, bf16 on CUDA
DEFAULT_SESSIONS = Path("out/sessions")
RANDOM_WEIGHTS_BANNER = (
    "This is a tiny checkpoint with **random weights**: its images are noise and its "
    "answers gibberish, but every computation is the real one. Start the app with "
    "`workbench app --model /path/to/BAGEL-7B-MoT` (or enter a folder in the sidebar) "
    "for real output."
)


@dataclass(frozen=True)
class AppOptions:
    model: str  # a checkpoint folder or hub id; "" is the tiny default
    device: str
    sessions: Path  # where sessions are saved and picked from
    threads: int  # torch CPU threads for the model's work


@functools.cache
def app_threads() -> int:
    """The free cores but one, kept for the browser and the server (looked at once per
    process: every page rerun then reads the same count)."""
    return default_threads(keep=1)


def app_options(argv: Sequence[str], environ: Mapping[str, str]) -> AppOptions:
    """Options from the command line after `--`, else $WORKBENCH_MODEL / _DEVICE /
    _SESSIONS / _THREADS, else the defaults."""
    parser = argparse.ArgumentParser(prog="streamlit run streamlit_app.py --")
    parser.add_argument("--model", default=environ.get("WORKBENCH_MODEL", ""))
    parser.add_argument(
        "--device", choices=DEVICES, default=environ.get("WORKBENCH_DEVICE", "auto")
    )
    parser.add_argument(
        "--sessions", type=Path, default=Path(environ.get("WORKBENCH_SESSIONS", DEFAULT_SESSIONS))
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=int(environ.get("WORKBENCH_THREADS", 0)) or app_threads(),
        help="CPU threads for the model (default: the free cores but one, kept for the browser)",
    )
    args = parser.parse_args(list(argv))
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, not {args.threads}")
    return AppOptions(args.model.strip(), args.device, args.sessions, args.threads)


@dataclass(frozen=True)
class LoadedModel:
    """A pipeline shared by every browser session, and the gate its generations pass."""

    pipe: BagelPipeline
    gate: Gate
    name: str  # what the sidebar shows
    random_weights: bool
    world: bool = False  # a world model of the rendered world (workbench/world/model.py)
    spec: str = ""  # what it was loaded from ("" the tiny default): a branch's record

    @property
    def summary(self) -> str:
        """Which model runs, in words, for the sidebar."""
        if self.world:
            return (
                "A **world model** trained on the rendered world: 64 × 64 views, moves, "
                "future frames; each frame is checked against the renderer's true frame."
            )
        if self.random_weights:
            return "The tiny checkpoint with **random weights**: its frames are noise."
        return "A checkpoint of your choice."


def model_for_page(spec: str, page: str) -> str:
    """The checkpoint a page runs: the one asked for; with none asked for, the world
    model (when present) on the World page, else "" (the tiny default)."""
    spec = spec.strip()
    if not spec and page == "World" and (world := default_world_model()) is not None:
        return str(world)
    return spec


def load_model(model: str, device: str = "auto", profile: str | None = None) -> LoadedModel:
    """Load a checkpoint folder or hub id; "" makes (if needed) and loads the tiny default.
    `profile`: a memory profile (bagel/profiles.py); None: the device's default."""
    spec = model
    if not model:
        if not (DEFAULT_TINY / "ae.safetensors").exists():  # written last
            from bagel.tiny import make_tiny

            make_tiny(DEFAULT_TINY)
        model = str(DEFAULT_TINY)
    pipe = load(model, device=device, profile=profile)
    random_weights = pipe.config == BagelConfig.tiny()
    return LoadedModel(pipe, Gate(), model, random_weights, is_world_model(model), spec)

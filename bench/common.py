"""Shared set-up and timing helpers for the CPU benchmarks in this folder.

- `tiny_pipeline`: a tiny random checkpoint written by `make_tiny` into a temporary
  folder and loaded with `load(folder, dtype="float32")`. The only change from
  `BagelConfig.tiny()` is `max_position_embeddings`, raised from 4096 to 32768 (the 7B
  value) so that 8k and 16k contexts stay inside the model's position range. No weight
  depends on it (RoPE is computed from the formula).
- `fill_context`: grows a context to a given length through the pipeline's real prefill
  path (`BagelPipeline.append_token_ids`, what `append_text` runs after tokenising), one causal
  text segment of random token ids at a time. The cached K/V are therefore the model's
  own, and the context has the block layout a real session has (O(log n) blocks).
- `time_modes`: median wall-clock milliseconds of several callables, measured
  interleaved (one call of each per round) so that slow drifts of the machine hit every
  mode alike.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bagel.checkpoint import load  # noqa: E402
from bagel.config import BagelConfig  # noqa: E402
from bagel.kv import KVContext  # noqa: E402
from bagel.llm import Routing  # noqa: E402
from bagel.pipeline import BagelPipeline  # noqa: E402
from bagel.tiny import make_tiny  # noqa: E402

SEGMENT_TOKENS = 512  # one prefill forward per segment while filling a context
MAX_POSITIONS = 32768


@dataclasses.dataclass(frozen=True)
class ImageQuery:
    """The inputs of one denoising step: noisy latent patches, time, grid, routing."""

    x: torch.Tensor  # [N, patch_latent_dim] float32
    t: torch.Tensor  # scalar flow time
    grid: tuple[int, int]
    routing: Routing

    @property
    def rows(self) -> int:
        return self.routing.num_rows  # N latent tokens + 2 markers


def tiny_config() -> BagelConfig:
    config = BagelConfig.tiny()
    llm = dataclasses.replace(config.llm, max_position_embeddings=MAX_POSITIONS)
    return dataclasses.replace(config, llm=llm)


def tiny_pipeline(folder: Path, seed: int = 0) -> BagelPipeline:
    """Write a tiny random checkpoint into folder and load it in float32 on the CPU."""
    make_tiny(folder, seed=seed, config=tiny_config())
    return load(folder, device="cpu", dtype="float32")


def temp_folder() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="bagel-bench-")


def append_random_text(
    pipe: BagelPipeline, ctx: KVContext, n: int, generator: torch.Generator
) -> None:
    """Prefill n random token ids as one causal text segment (the append_text path)."""
    vocab = pipe.config.llm.vocab_size
    pipe.append_token_ids(ctx, torch.randint(0, vocab, (n,), generator=generator))


def fill_context(
    pipe: BagelPipeline,
    length: int,
    generator: torch.Generator,
    segment: int = SEGMENT_TOKENS,
) -> KVContext:
    """A new context grown to `length` tokens by text segments of random ids."""
    ctx = pipe.new_context()
    while ctx.length < length:
        append_random_text(pipe, ctx, min(segment, length - ctx.length), generator)
    return ctx


def largest_image_query(pipe: BagelPipeline, generator: torch.Generator) -> ImageQuery:
    """The largest image the model's latent table allows (8×8 latent tokens on the tiny
    model, a 128×128 image), at flow time 0.5."""
    side = pipe.config.max_latent_size
    n = side * side
    x = torch.randn(n, pipe.config.patch_latent_dim, generator=generator)
    routing = Routing.latent_spans(n + 2, [(1, n + 1)], pipe.device)
    return ImageQuery(x, torch.tensor(0.5), (side, side), routing)


def velocity(pipe: BagelPipeline, query: ImageQuery, branches: list[KVContext]) -> torch.Tensor:
    """One denoising forward of the query block against the branches → [B, N, 64]."""
    return pipe.velocity(query.x, query.t, query.grid, branches, query.routing)


def time_modes(modes: dict[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, float]:
    """Median milliseconds per call of each mode; rounds interleave the modes."""
    for fn in modes.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(reps):
        for name, fn in modes.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def describe_machine() -> str:
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
        "tiny random checkpoint"
    )


def cli(
    doc: str, run: Callable[[list[int], int, int, int], None], lengths: tuple[int, ...]
) -> None:
    """Parse the benchmarks' shared options and call run(lengths, reps, warmup, seed)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(lengths))
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run(args.lengths, args.reps, args.warmup, args.seed)

"""One denoising step with the three CFG branches vs one step without CFG.

    .venv/bin/python bench/bench_cfg.py [--lengths 1024 8192 16384] [--reps N]

What is measured: the wall-clock time of one denoising forward of the largest tiny-model
image query (8×8 = 64 latent tokens + 2 markers = 66 rows), at a few main-context
lengths, in three modes run in the same process on the same contexts:

- 1 branch: `velocity(..., [main])` — a step without CFG (or a step past the CFG
  interval);
- 3 batched: `velocity(..., [main, text_dropped, image_dropped])` — the project's CFG
  step: the three branches share the query rows, so the projections and MLPs run as one
  [3, 66, C] batch and only attention is per branch;
- 3 sequential: three single-branch `velocity` calls, one per branch — the official
  implementation's way (three forwards per step).

The contexts model a text-to-image request after a long history: `main` is
history + a 32-token prompt, `text_dropped` is a prefix view of `main` without the
prompt (no copy, as the pipeline's CFG contexts are), `image_dropped` a separate
context holding only a 32-token prompt. All are filled through the real prefill path
(see bench/common.py). The batched and sequential modes are checked to give the same
velocities before timing. Medians over interleaved repetitions after warm-up; nothing
is asserted on time.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from bagel.kv import KVContext  # noqa: E402
from bagel.pipeline import BagelPipeline  # noqa: E402
from bench.common import (  # noqa: E402
    ImageQuery,
    append_random_text,
    cli,
    describe_machine,
    fill_context,
    largest_image_query,
    temp_folder,
    time_modes,
    tiny_pipeline,
    velocity,
)

DEFAULT_LENGTHS = (1024, 8192, 16384)
PROMPT_TOKENS = 32


def cfg_branches(pipe: BagelPipeline, length: int, generator: torch.Generator) -> list[KVContext]:
    """[main, text_dropped, image_dropped] for a main context of `length` tokens."""
    history = length - PROMPT_TOKENS
    main = fill_context(pipe, history, generator)
    append_random_text(pipe, main, PROMPT_TOKENS, generator)
    text_dropped = main.prefix(history, rope=history)  # rope == length: one id per token
    image_dropped = pipe.new_context()
    append_random_text(pipe, image_dropped, PROMPT_TOKENS, generator)
    return [main, text_dropped, image_dropped]


def sequential(pipe: BagelPipeline, query: ImageQuery, branches: list[KVContext]) -> Tensor:
    return torch.cat([velocity(pipe, query, [ctx]) for ctx in branches])


def check_same_output(pipe: BagelPipeline, query: ImageQuery, branches: list[KVContext]) -> None:
    torch.testing.assert_close(
        velocity(pipe, query, branches), sequential(pipe, query, branches), rtol=1e-5, atol=1e-5
    )


def measure(
    pipe: BagelPipeline, query: ImageQuery, branches: list[KVContext], reps: int, warmup: int
) -> dict[str, float]:
    return time_modes(
        {
            "one": lambda: velocity(pipe, query, branches[:1]),
            "batched": lambda: velocity(pipe, query, branches),
            "sequential": lambda: sequential(pipe, query, branches),
        },
        reps,
        warmup,
    )


def print_header() -> None:
    print(
        f"{'length':>7} {'1 branch ms':>12} {'3 batched ms':>13} {'3 sequential ms':>16} "
        f"{'batched/1':>10} {'seq/batched':>12}"
    )


def print_row(length: int, ms: dict[str, float]) -> None:
    print(
        f"{length:>7} {ms['one']:>12.2f} {ms['batched']:>13.2f} {ms['sequential']:>16.2f} "
        f"{ms['batched'] / ms['one']:>10.2f} {ms['sequential'] / ms['batched']:>12.2f}",
        flush=True,
    )


def run(lengths: list[int], reps: int, warmup: int, seed: int) -> None:
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(seed)
    with temp_folder() as tmp:
        pipe = tiny_pipeline(Path(tmp) / "tiny", seed=seed)
        query = largest_image_query(pipe, generator)
        print(f"# {describe_machine()}, backend {pipe.backend!r}")
        print(f"# query: {query.rows} rows ({query.grid[0]}x{query.grid[1]} latent + 2 markers)")
        print(
            f"# branches: main (length), text_dropped (prefix view, length-{PROMPT_TOKENS}), "
            f"image_dropped ({PROMPT_TOKENS} tokens)"
        )
        print(f"# median of {reps} interleaved reps after {warmup} warm-up calls per mode")
        print_header()
        for length in lengths:
            branches = cfg_branches(pipe, length, generator)
            check_same_output(pipe, query, branches)
            print_row(length, measure(pipe, query, branches, reps, warmup))


if __name__ == "__main__":
    cli(__doc__, run, DEFAULT_LENGTHS)

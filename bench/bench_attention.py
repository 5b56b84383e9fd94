"""Denoising-step time vs cached-context length: chunked attention vs copy-and-scatter.

    .venv/bin/python bench/bench_attention.py [--lengths 1024 2048 ...] [--reps N]

What is measured: the wall-clock time of one denoising forward (`BagelPipeline.velocity`
with one branch, i.e. no CFG) of the largest image query the tiny model allows — 8×8 =
64 latent tokens plus the two image markers, 66 rows — against a cached context of
1k…16k tokens, in two modes run in the same process on the same context:

(a) project: `bagel.attention.attend` as shipped — the cached chunks are concatenated
    into one buffer (when there are several) and attended as one part, the new rows as
    a second, and the two partials are merged by log-sum-exp;
(b) baseline: `attend` replaced (monkeypatched in `bagel.llm`) by `copy_scatter_attend`
    below, which does what the official implementation does at every step and every
    layer: allocate a zeroed merged K/V buffer of length kv_len + q_len, index-assign
    the cached rows and the new rows into it, then run ONE attention over it with the
    same backend kernel. The query block of an image is non-causal and sees every key,
    so no mask is needed.

Everything else (projections, MLPs, experts, RoPE, llm2vae) is the same code, so the
difference between the columns is a zeroed buffer with index-assigned rows vs a
concatenation of the cache and a two-part merge. (An earlier version of the project
attended every block in place and merged per block, to avoid the copy; that made results
depend on the block layout, so a replay after an undo could differ by rounding, and on a
GPU it was slower: see docs/benchmarks.md.)

The context is filled through the real prefill path (see bench/common.py). Both modes
are checked to give the same velocity (torch.testing.assert_close) before timing.
Times are medians over interleaved repetitions after warm-up; nothing is asserted on
time.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

import bagel.llm  # noqa: E402
from bagel.attention import _PARTIAL, attend  # noqa: E402
from bagel.kv import KVContext  # noqa: E402
from bagel.pipeline import BagelPipeline  # noqa: E402
from bench.common import (  # noqa: E402
    ImageQuery,
    cli,
    describe_machine,
    fill_context,
    largest_image_query,
    temp_folder,
    time_modes,
    tiny_pipeline,
    velocity,
)

DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384)

_INDEX_CACHE: dict[tuple[int, int], Tensor] = {}


def _rows(start: int, n: int) -> Tensor:
    """Index tensor start..start+n-1; cached, as the reference builds its packed
    indexes once per forward, not per layer."""
    key = (start, n)
    if key not in _INDEX_CACHE:
        _INDEX_CACHE[key] = torch.arange(start, start + n)
    return _INDEX_CACHE[key]


def copy_scatter_attend(
    q: Tensor,
    cached: list[tuple[Tensor, Tensor]],
    k: Tensor,
    v: Tensor,
    causal: bool,
    backend: str,
    frames: object = None,
) -> Tensor:
    """`attend` as the reference does it: merged buffer, scatter the past and the new rows,
    one attention. Same signature as `bagel.attention.attend`; non-causal blocks only."""
    if causal or frames is not None:
        raise NotImplementedError("the baseline is only used for (non-causal) image queries")
    hkv, lq, d = k.shape
    kv_len = sum(ck.shape[1] for ck, _ in cached)
    merged_k = k.new_zeros(hkv, kv_len + lq, d)
    merged_v = v.new_zeros(hkv, kv_len + lq, d)
    offset = 0
    for ck, cv in cached:  # the reference's cache is one tensor; here one chunk per block
        rows = _rows(offset, ck.shape[1])
        merged_k[:, rows] = ck
        merged_v[:, rows] = cv
        offset += ck.shape[1]
    rows = _rows(kv_len, lq)
    merged_k[:, rows] = k
    merged_v[:, rows] = v
    out, _ = _PARTIAL[backend](q, merged_k, merged_v, False)
    return out.to(q.dtype)


@contextlib.contextmanager
def copy_scatter_baseline() -> Iterator[None]:
    """Route MoTAttention's attention through `copy_scatter_attend` while active."""
    original = bagel.llm.attend
    bagel.llm.attend = copy_scatter_attend
    try:
        yield
    finally:
        bagel.llm.attend = original


def baselinevelocity(pipe: BagelPipeline, query: ImageQuery, ctx: KVContext) -> Tensor:
    with copy_scatter_baseline():
        return velocity(pipe, query, [ctx])


def check_same_output(pipe: BagelPipeline, query: ImageQuery, ctx: KVContext) -> None:
    torch.testing.assert_close(
        baselinevelocity(pipe, query, ctx), velocity(pipe, query, [ctx]), rtol=1e-5, atol=1e-5
    )


def measure(
    pipe: BagelPipeline, query: ImageQuery, ctx: KVContext, reps: int, warmup: int
) -> dict[str, float]:
    return time_modes(
        {
            "project": lambda: velocity(pipe, query, [ctx]),
            "baseline": lambda: baselinevelocity(pipe, query, ctx),
        },
        reps,
        warmup,
    )


def attention_inputs(
    pipe: BagelPipeline, ctx: KVContext, rows: int, generator: torch.Generator
) -> tuple[Tensor, list[tuple[Tensor, Tensor]], Tensor, Tensor]:
    """Random q and new k/v of one layer's query block, and layer 0's cached chunks."""
    llm = pipe.config.llm
    q = torch.randn(llm.num_attention_heads, rows, llm.head_dim, generator=generator)
    k, v = torch.randn(2, llm.num_key_value_heads, rows, llm.head_dim, generator=generator)
    return q, ctx.chunks(0), k, v


def measure_attention_only(
    pipe: BagelPipeline,
    query: ImageQuery,
    ctx: KVContext,
    generator: torch.Generator,
    reps: int,
    warmup: int,
) -> dict[str, float]:
    """The attention call of one layer alone (no projections, MLPs or Python forward)."""
    q, cached, k, v = attention_inputs(pipe, ctx, query.rows, generator)
    backend = pipe.backend
    with torch.inference_mode():
        torch.testing.assert_close(
            copy_scatter_attend(q, cached, k, v, False, backend),
            attend(q, cached, k, v, False, backend),
            rtol=1e-5,
            atol=1e-5,
        )
        return time_modes(
            {
                "project": lambda: attend(q, cached, k, v, False, backend),
                "baseline": lambda: copy_scatter_attend(q, cached, k, v, False, backend),
            },
            reps,
            warmup,
        )


def print_row(length: int, chunks: int, ms: dict[str, float]) -> None:
    ratio = ms["baseline"] / ms["project"]
    print(
        f"{length:>7} {chunks:>6} {ms['project']:>11.3f} {ms['baseline']:>12.3f} {ratio:>6.2f}",
        flush=True,
    )


def print_header(title: str) -> None:
    print(f"\n## {title}")
    print(f"{'length':>7} {'chunks':>6} {'project ms':>11} {'baseline ms':>12} {'ratio':>6}")


def run(lengths: list[int], reps: int, warmup: int, seed: int) -> None:
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(seed)
    with temp_folder() as tmp:
        pipe = tiny_pipeline(Path(tmp) / "tiny", seed=seed)
        query = largest_image_query(pipe, generator)
        print(f"# {describe_machine()}, backend {pipe.backend!r}")
        print(f"# query: {query.rows} rows ({query.grid[0]}x{query.grid[1]} latent + 2 markers)")
        print(f"# median of {reps} interleaved reps after {warmup} warm-up calls per mode")
        step_rows, attn_rows = [], []
        for length in lengths:
            ctx = fill_context(pipe, length, generator)
            check_same_output(pipe, query, ctx)
            step_rows.append((length, len(ctx.spans), measure(pipe, query, ctx, reps, warmup)))
            attn = measure_attention_only(pipe, query, ctx, generator, reps, warmup)
            attn_rows.append((length, len(ctx.spans), attn))
        print_header("one denoising step (velocity, 1 branch, all layers)")
        for row in step_rows:
            print_row(*row)
        print_header("one layer's attention call alone (attend vs copy_scatter_attend)")
        for row in attn_rows:
            print_row(*row)


if __name__ == "__main__":
    cli(__doc__, run, DEFAULT_LENGTHS)

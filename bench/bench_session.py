"""A 20-turn chain: one persistent session vs rebuilding the contexts every turn.

    .venv/bin/python bench/bench_session.py [--turns 20] [--reps 5] [--steps 8] [--size 128]

What is measured: the wall-clock time of each turn of a chain that alternates a user
text and a generated image (turn k = a text, then an image), in two modes run in the
same process:

- persistent: one `workbench.session.Session`; each turn is `add_text` then
  `generate_image`, and the generated image re-enters the context (VAE + ViT tokens).
  The turn costs its own tokens only.
- rebuild: what the official single-call inferencer does (spec §7.8, §11 item 1): every
  turn starts from three empty contexts and re-feeds the whole history so far — every
  earlier text, and every earlier generated image re-encoded as VAE + ViT tokens — then
  the new text, then samples the image. The contexts are rebuilt by a fresh `Session`
  re-fed the history (the same recipe as `bagel.interleave.build_contexts`, but each
  image keeps the seed of its own VAE posterior sample, as the persistent session does);
  the generated image is not appended (the next turn re-encodes it).

The rebuild mode runs on the project's kernels (no K/V copy per step, batched CFG
branches, the text-dropped context as a view), so it is a lower bound on the
reference's cost: only the re-encoding of the history is measured.

Both modes keep their own history and use seed = turn index. Their latents are compared
with `torch.equal` at every turn; at the first two turns (at most one earlier image, so
one generator gives the same posterior sample) the rebuilt contexts are also checked
against `build_contexts`. The modes are interleaved turn by turn, in alternating order;
times are medians over the repetitions. KV bytes are taken at the moment turn K's image
is sampled: the session's allocated blocks (shared blocks once; the text-dropped context
is a view of main) vs three separate caches holding main, text-dropped and
image-dropped, as the reference keeps them. Nothing is asserted on time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor  # noqa: E402

from bagel.interleave import build_contexts  # noqa: E402
from bagel.pipeline import BagelPipeline  # noqa: E402
from bagel.sampling import ImageOutput  # noqa: E402
from bench.common import describe_machine, temp_folder, tiny_pipeline  # noqa: E402
from workbench.memory import Memory  # noqa: E402
from workbench.params import GenerationParams  # noqa: E402
from workbench.session import Session  # noqa: E402

MOVES = (
    "walk forward along the path",
    "turn left at the old oak",
    "look up at the sky",
    "step closer to the river",
    "turn right toward the bridge",
)
CHECKPOINTS = (5, 10, 20)
WARMUP_TURNS = 2

History = list[str | tuple[Image.Image, int]]  # user texts; generated images with their seed


def prompt(turn: int) -> str:
    return f"turn {turn + 1}: {MOVES[turn % len(MOVES)]}"


def turn_params(turn: int, steps: int, size: int) -> GenerationParams:
    return GenerationParams(num_timesteps=steps, height=size, width=size, seed=turn)


def sample(pipe: BagelPipeline, s: Session, params: GenerationParams) -> ImageOutput:
    """What `Session.generate_image` samples, without appending the image afterwards."""
    return pipe.generate_image(
        s.main,
        params.height,
        params.width,
        params.sampler(),
        cfg_text_ctx=s.main.prefix(s.text_mark.length, s.text_mark.rope),
        cfg_img_ctx=s.image_dropped,
        generator=params.generator(),
    )


def rebuilt(pipe: BagelPipeline, history: History, text: str) -> Session:
    """Three fresh contexts fed the whole history, then the new text."""
    s = Session(pipe)
    for item in history:
        if isinstance(item, str):
            s.add_text(item)
        else:
            s.add_image(*item)
    s.add_text(text)
    return s


def keep_latents(pipe: BagelPipeline) -> None:
    """Wrap pipe.generate_image (on the instance) so that every sampled latent is kept in
    pipe.sampled: `Session.generate_image` returns only the image."""
    pipe.sampled = []
    generate = pipe.generate_image

    def generate_and_keep(*args, **kwargs) -> ImageOutput:
        out = generate(*args, **kwargs)
        pipe.sampled.append(out.latent)
        return out

    pipe.generate_image = generate_and_keep


class Chain:
    """One mode's chain: its history, and per turn its time, latent and KV figures."""

    def __init__(self, pipe: BagelPipeline, persistent: bool):
        self.pipe, self.persistent = pipe, persistent
        self.session = Session(pipe)
        self.history: History = []
        self.seconds: list[float] = []
        self.latents: list[Tensor] = []
        self.memory: list[Memory] = []

    def turn(self, k: int, params: GenerationParams) -> None:
        text = prompt(k)
        started = time.perf_counter()
        if self.persistent:
            self.session.add_text(text)
            memory = self.session.memory()  # before the image: what sampling reads
            image = self.session.generate_image(params)
        else:
            s = rebuilt(self.pipe, self.history, text)
            memory, image = s.memory(), sample(self.pipe, s, params).image
        self.seconds.append(time.perf_counter() - started)
        self.history += [text, (image, params.seed)]
        self.latents.append(self.pipe.sampled.pop())
        self.memory.append(memory)


def check_official_recipe(pipe: BagelPipeline, chain: Chain, steps: int, size: int) -> bool:
    """The rebuilt contexts of turns 1-2 equal `build_contexts`'s (one generator suffices
    while the history holds at most one image): the same latent, bit for bit."""
    for k in range(min(2, len(chain.latents))):
        params = turn_params(k, steps, size)
        generator = torch.Generator().manual_seed(max(k - 1, 0))  # the earlier image's seed
        inputs = [x if isinstance(x, str) else x[0] for x in chain.history[: 2 * k]]
        ctx, _ = build_contexts(pipe, [*inputs, prompt(k)], False, False, generator)
        out = pipe.generate_image(
            ctx.main,
            size,
            size,
            params.sampler(),
            cfg_text_ctx=ctx.text_dropped,
            cfg_img_ctx=ctx.image_dropped,
            generator=params.generator(),
        )
        pipe.sampled.pop()
        if not torch.equal(out.latent, chain.latents[k]):
            return False
    return True


def run_chains(pipe: BagelPipeline, turns: int, steps: int, size: int, flip: bool) -> list[Chain]:
    """Both modes advanced together, turn by turn, the order alternating per turn."""
    chains = [Chain(pipe, persistent=True), Chain(pipe, persistent=False)]
    for k in range(turns):
        order = chains if (k + flip) % 2 == 0 else chains[::-1]
        for chain in order:
            chain.turn(k, turn_params(k, steps, size))
    return chains


def equal_turns(persistent: Chain, rebuild: Chain) -> tuple[int, float]:
    """Turns whose latents are bit-identical, and the largest |difference| seen."""
    same = sum(torch.equal(a, b) for a, b in zip(persistent.latents, rebuild.latents, strict=True))
    worst = max(
        float((a - b).abs().max()) for a, b in zip(persistent.latents, rebuild.latents, strict=True)
    )
    return same, worst


def median_turn_ms(runs: list[list[Chain]], mode: int) -> list[float]:
    per_turn = zip(*(chains[mode].seconds for chains in runs), strict=True)
    return [statistics.median(times) * 1e3 for times in per_turn]


def median_cumulative_s(runs: list[list[Chain]], mode: int, k: int) -> float:
    return statistics.median(sum(chains[mode].seconds[:k]) for chains in runs)


def print_settings(pipe: BagelPipeline, turns: int, steps: int, size: int, reps: int) -> None:
    p = turn_params(0, steps, size)
    grid = size // pipe.config.latent_downsample
    print(f"# {describe_machine()}, backend {pipe.backend!r}")
    print(
        f"# chain: {turns} turns, each a user text then a generated {size}x{size} image "
        f"({grid}x{grid} latent tokens)"
    )
    print(
        f"# generation: num_timesteps={p.num_timesteps}, timestep_shift={p.timestep_shift}, "
        f"cfg_text_scale={p.cfg_text_scale}, cfg_img_scale={p.cfg_img_scale}, "
        f"cfg_interval={p.cfg_interval}, cfg_renorm_type={p.cfg_renorm_type!r}, "
        "seed = turn index"
    )
    print(
        f"# median of {reps} reps after a {WARMUP_TURNS}-turn warm-up; the modes are "
        "interleaved turn by turn, in alternating order"
    )


def print_turns(runs: list[list[Chain]]) -> None:
    persistent, rebuild = median_turn_ms(runs, 0), median_turn_ms(runs, 1)
    tokens = [m.main_tokens for m in runs[0][0].memory]
    print("\n## time per turn (ms; main = main-context tokens when the image is sampled)")
    print(f"{'turn':>5} {'main':>6} {'persistent':>11} {'rebuild':>9} {'rebuild/persistent':>19}")
    for k, (a, b) in enumerate(zip(persistent, rebuild, strict=True)):
        print(f"{k + 1:>5} {tokens[k]:>6} {a:>11.1f} {b:>9.1f} {b / a:>19.2f}")


def print_cumulative(runs: list[list[Chain]], checkpoints: list[int]) -> None:
    print("\n## cumulative time of the first K turns (s)")
    print(f"{'K':>5} {'persistent':>11} {'rebuild':>9} {'rebuild/persistent':>19}")
    for k in checkpoints:
        a, b = median_cumulative_s(runs, 0, k), median_cumulative_s(runs, 1, k)
        print(f"{k:>5} {a:>11.2f} {b:>9.2f} {b / a:>19.2f}")


def print_memory(pipe: BagelPipeline, chain: Chain, checkpoints: list[int]) -> None:
    per_token = pipe.kv_layout.bytes_per_token
    print(f"\n## KV bytes when turn K's image is sampled ({per_token} B per token)")
    print(
        f"{'K':>5} {'main':>6} {'text-dr':>8} {'image-dr':>9} {'session used':>13} "
        f"{'session alloc':>14} {'three copies':>13} {'copies/alloc':>13}"
    )
    for k in checkpoints:
        m = chain.memory[k - 1]
        used = (m.main_tokens + m.image_dropped_tokens) * per_token  # text-dropped: a view
        copies = (m.main_tokens + m.text_dropped_tokens + m.image_dropped_tokens) * per_token
        print(
            f"{k:>5} {m.main_tokens:>6} {m.text_dropped_tokens:>8} {m.image_dropped_tokens:>9} "
            f"{used:>13} {m.allocated_bytes:>14} {copies:>13} {copies / m.allocated_bytes:>13.2f}"
        )


def run(turns: int, reps: int, steps: int, size: int, seed: int) -> None:
    torch.set_num_threads(2)
    checkpoints = [k for k in CHECKPOINTS if k <= turns] or [turns]
    with temp_folder() as tmp:
        pipe = tiny_pipeline(Path(tmp) / "tiny", seed=seed)
        keep_latents(pipe)
        print_settings(pipe, turns, steps, size, reps)
        load_before = os.getloadavg()[0]
        run_chains(pipe, WARMUP_TURNS, steps, size, flip=False)
        runs = [run_chains(pipe, turns, steps, size, flip=rep % 2 == 1) for rep in range(reps)]
        checks = [equal_turns(*chains) for chains in runs]
        print(
            "# rebuild vs persistent latents, torch.equal: "
            + ", ".join(f"{same}/{turns}" for same, _ in checks)
            + f" turns per rep; largest |diff| {max(w for _, w in checks):.3g}"
        )
        print(
            f"# machine load (1-min average) before / after the timed runs: "
            f"{load_before:.2f} / {os.getloadavg()[0]:.2f}"
        )
        official = check_official_recipe(pipe, runs[0][1], steps, size)
        print(f"# rebuilt contexts == build_contexts at turns 1-2 (latents equal): {official}")
        print_turns(runs)
        print_cumulative(runs, checkpoints)
        print_memory(pipe, runs[0][0], checkpoints)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="num_timesteps per image")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="the tiny checkpoint's seed")
    args = parser.parse_args()
    run(args.turns, args.reps, args.steps, args.size, args.seed)


if __name__ == "__main__":
    main()

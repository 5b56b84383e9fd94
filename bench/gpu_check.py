"""One prepared GPU run: every memory profile and option checked and timed on CUDA.

    bash scripts/gpu-check.sh OUT            # a GPU machine: CUDA, at most 9 minutes
    bash scripts/gpu-check.sh --smoke OUT    # the same code paths on the CPU, tiny, seconds
    python bench/gpu_check.py --out OUT [--smoke] [--minutes 8]

Sections, most valuable first; each row is written to OUT/results.json and results.md as
soon as it is measured, so a run stopped by its time limit keeps what it did:
a. correctness on a tiny random checkpoint made here: bf16, int8, nf4, offload and
   int8+offload (a budget that streams layers), TaylorSeer, compiled, each against fp32 on
   the CPU (same context and noise): relative L2 error of the first velocity and of the
   sampled latent within the bounds of docs/profiles.md; a saved session replayed twice;
b. the 7B architecture with random weights (bench/bench_gpu_profiles.py): seconds and peak
   GPU memory of a 1024² image with the app's defaults: bf16 text-to-image, the same with
   TaylorSeer, int8, nf4, edit, compiled, then (after d: its weights are drawn on the
   CPU, a minute or two) offload; all but the first two run 10 timesteps, scaled to 50;
c. a navigation step at 256² after 8 frames (frames/s) and text generation (tokens/s);
d. per missed goal (GOALS): a torch profiler table of that step in OUT/profiler.txt.
A row's status: ok, fail (outside its bound, or not finite), goal missed, skipped (why:
a missing package, a profile the device refuses, the time budget) or error (the
exception's first line; its traceback is in the log).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bagel.checkpoint import load, read_header  # noqa: E402
from bagel.compiled import compile_decoder  # noqa: E402
from bagel.config import BagelConfig  # noqa: E402
from bagel.errors import CheckpointError  # noqa: E402
from bagel.flow import SamplerParams  # noqa: E402
from bagel.llm import Routing, layer_device  # noqa: E402
from bagel.profiles import check_runnable, parse_profile, weight_bytes  # noqa: E402
from bagel.tiny import make_tiny  # noqa: E402
from bagel.tokenizer import write_tiny_tokenizer  # noqa: E402
from bench import bench_gpu_profiles as matrix  # noqa: E402
from bench.bench_gpu import relative_error, sync  # noqa: E402
from workbench import store  # noqa: E402
from workbench.chains import navigate  # noqa: E402
from workbench.files import write_atomic  # noqa: E402
from workbench.params import GenerationParams  # noqa: E402
from workbench.session import Session  # noqa: E402

BF16_BOUND = 0.02  # bf16 rounding against fp32 (docs/profiles.md, "The GPU check")
CPU_BOUNDS = {"int8": 0.02, "nf4": 0.15}  # tests/test_profiles.py, fp32 activations
GOALS = {  # on one H100 / H200, 1024², 50 timesteps: (limit, unit, at most?)
    "t2i": (8.0, "s", True),  # bf16 text-to-image
    "t2i-taylorseer": (4.0, "s", True),  # the same with TaylorSeer
    "int8": (22.0, "GiB", True),  # peak GPU memory: a 24 GB card
    "nf4": (16.0, "GiB", True),
    "navigation": (2.0, "frames/s", False),  # one step at 256²
    "text": (150.0, "tokens/s", False),
}
CPU = torch.device("cpu")
NO_CPU_COMPILE = "compiling on the CPU takes longer than a smoke run (tests/test_compiled.py)"


@dataclass(frozen=True)
class Plan:
    smoke: bool
    device: torch.device
    config: BagelConfig  # section b, c and d's model
    full: str  # the full-precision profile: bf16 on CUDA, fp32 on the CPU
    side: int  # section b's image side
    steps: int  # timesteps of b's first two cells
    short: int  # timesteps of the other cells (scaled to `steps`)
    tiny_steps: int  # timesteps of section a's samples: 9, as the bounds' CPU tests
    nav_side: int
    tokens: int

    @classmethod
    def make(cls, smoke: bool) -> Plan:
        if smoke:
            return cls(True, CPU, BagelConfig.tiny(), "fp32", 64, 4, 3, 9, 64, 8)
        cuda = torch.device("cuda")
        return cls(False, cuda, BagelConfig.official_7b(), "bf16", 1024, 50, 10, 9, 256, 128)


class Results:
    """The rows so far, rewritten to results.json and results.md after every row."""

    def __init__(self, out: Path, header: dict, minutes: float) -> None:
        self.out, self.header, self.rows = out, header, []
        self.started = time.monotonic()
        self.deadline = self.started + 60 * minutes
        self.missed: set[str] = set()

    def add(self, section, check, figure="", bound="", status="ok", note="", **data) -> None:
        bad = [k for k, v in data.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            status, note = "fail", f"{note}; not finite: {', '.join(bad)}".lstrip("; ")
            data = {k: "NaN" if k in bad else v for k, v in data.items()}
        row = dict(section=section, check=check, figure=figure, bound=bound, status=status)
        at = round(time.monotonic() - self.started, 1)  # seconds into the run
        self.rows.append({**row, "note": note, "at_s": at, **data})
        print(" | ".join(str(v) for v in (*row.values(), note)), flush=True)
        self.write()

    def goal(self, key: str, value: float, plan: Plan) -> tuple[str, str]:
        """(bound text, status) of a figure against the goal `key` (none in smoke mode)."""
        limit, unit, at_most = GOALS[key]
        bound = f"goal {'≤' if at_most else '≥'} {limit:g} {unit}"
        if plan.smoke:
            return f"{bound} (7B, GPU)", "ok"
        if (value <= limit) if at_most else (value >= limit):
            return bound, "ok"
        self.missed.add(key)
        return bound, "goal missed"

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline

    def write(self) -> None:
        text = json.dumps({**self.header, "rows": self.rows}, indent=1, allow_nan=False)
        write_atomic(self.out / "results.json", lambda t: t.write_text(text + "\n"))
        lines = ["# GPU check", ""] + [f"- {k}: {v}" for k, v in self.header.items()]
        lines += ["", "| section | check | figure | bound or goal | status | note |"]
        lines.append("|---|---|---|---|---|---|")
        for r in self.rows:
            cells = (r["section"], r["check"], r["figure"], r["bound"], r["status"], r["note"])
            lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
        write_atomic(self.out / "results.md", lambda t: t.write_text("\n".join(lines) + "\n"))


def attempt(results: Results, section: str, check: str, fn) -> None:
    """Run one cell; a refusal or a missing package is a skipped row, a crash an error
    row, and the run goes on either way."""
    if results.out_of_time():
        results.add(section, check, status="skipped", note="time budget spent")
        return
    try:
        fn()
    except CheckpointError as refusal:
        results.add(section, check, status="skipped", note=str(refusal))
    except Exception as err:  # noqa: BLE001 - every cell reports, none stops the run
        traceback.print_exc()
        first = (str(err).splitlines() or [""])[0][:200]
        results.add(section, check, status="error", note=f"{type(err).__name__}: {first}")
    finally:
        free()


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- a. correctness on the tiny checkpoint -----------------------------------------------


def sample(pipe, params: SamplerParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(first velocity at t = 1, sampled latent) after a short text, fixed noise, 64²."""
    ctx, dropped = pipe.new_context(), pipe.new_context()
    pipe.append_text(ctx, "a red cat on a wall")
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    routing = Routing.latent_spans(18, [(1, 17)], pipe.device)
    v = pipe.velocity(x, torch.tensor(1.0), (4, 4), [ctx], routing)
    noise = torch.randn(16, 8, 8, generator=torch.Generator().manual_seed(1))
    out = pipe.generate_image(ctx, 64, 64, params, cfg_text_ctx=dropped, noise=noise)
    return v.float().cpu(), out.latent.float().cpu()


def correctness(results: Results, plan: Plan, tmp: Path) -> None:
    folder = make_tiny(tmp / "tiny", seed=0)
    device = plan.device
    params = SamplerParams(
        num_timesteps=plan.tiny_steps, cfg_img_scale=1.0, cfg_interval=(0.0, 1.0)
    )
    cached = SamplerParams(**{**params.__dict__, "feature_cache": "taylorseer"})
    refs = {p: sample(load(folder, device="cpu"), p) for p in (params, cached)}
    bf16_acts = device.type == "cuda"  # int8 / nf4 activations follow the device default
    other, layers = weight_bytes(read_header(folder / "ema.safetensors"), "bf16", torch.bfloat16)
    budget = {0: other + layers[0]}  # one decoder layer fits: the others are streamed
    cells = [
        ("bf16", dict(profile="bf16"), BF16_BOUND, params),
        *(
            (n, dict(profile=n), CPU_BOUNDS[n] + BF16_BOUND * bf16_acts, params)
            for n in ("int8", "nf4")
        ),
        ("offload", dict(profile="offload", max_memory=budget), BF16_BOUND, params),
        ("int8+offload", dict(profile="int8+offload", max_memory=budget), 2 * BF16_BOUND, params),
        ("TaylorSeer (bf16)", dict(profile="bf16"), BF16_BOUND, cached),
    ]

    def check(name, kwargs, bound, p):
        compare(results, name, load(folder, device=device, **kwargs), p, refs[p], bound)

    for cell in cells:
        attempt(results, "a. correctness", cell[0], lambda cell=cell: check(*cell))
    attempt(results, "a. correctness", "replay twice", lambda: replay(results, plan, folder, tmp))
    compiled = ("compiled (bf16)", dict(profile="bf16", compile=True), BF16_BOUND, params)
    if plan.smoke:
        results.add("a. correctness", compiled[0], status="skipped", note=NO_CPU_COMPILE)
    else:
        attempt(results, "a. correctness", compiled[0], lambda: check(*compiled))


def compare(results: Results, name: str, pipe, params, ref, bound: float) -> None:
    v, latent = sample(pipe, params)
    err_v, err_l = relative_error(v, ref[0]), relative_error(latent, ref[1])
    layers = pipe.net.language_model.model.layers
    streamed = sum(layer_device(x) != x.input_layernorm.weight.device for x in layers)
    note = f"{pipe.device.type}, {pipe.net.dtype}"
    ok = err_v < bound and err_l < bound and bool(torch.isfinite(latent).all())
    if "offload" in name:  # the budget must leave layers to stream
        ok, note = ok and streamed > 0, f"{note}, {streamed} of {len(layers)} layers streamed"
    figure = f"velocity {err_v:.2e}, latent {err_l:.2e}"
    results.add(
        "a. correctness", name, figure, f"< {bound:g}", "ok" if ok else "fail", note,
        velocity_rel_error=err_v, latent_rel_error=err_l,
    )  # fmt: skip


def replay(results: Results, plan: Plan, folder: Path, tmp: Path) -> None:
    pipe = load(folder, device=plan.device)
    session = Session(pipe)
    params = GenerationParams(height=64, width=64, num_timesteps=plan.tiny_steps, seed=3)
    session.add_text("a red cube on a table")
    session.generate_image(params)
    session.add_text("the camera moves forward")
    session.predict_frames(2, params, window=2, schedule="pyramid")
    saved = store.save(session, tmp / "session")
    reports = [store.replay(saved, pipe, report=tmp / f"replay-{k}.json") for k in (1, 2)]
    same = all(r.identical for r in reports)
    worst = max((f.max_abs_diff for r in reports for f in r.frames), default=0)
    figure = f"{len(reports[0].frames)} frames, largest diff {worst}/255"
    note = f"{pipe.device.type}, {pipe.net.dtype}; " + "; ".join(r.verdict() for r in reports)
    results.add(
        "a. correctness", "replay twice", figure, "identical", "ok" if same else "fail", note
    )


# -- b. the 7B architecture ------------------------------------------------------------


def build(plan: Plan, name: str, tmp: Path):
    """Section b-d's pipeline in profile `name`, refused first if the device cannot run it."""
    check_runnable(parse_profile(name, plan.device), plan.device)
    tokenizer = tmp / "tokenizer"
    if not tokenizer.exists():
        write_tiny_tokenizer(tokenizer)
    return matrix.build(plan.config, name, plan.device, tokenizer)


def timed(results, plan, pipe, name, task, cache, steps, goal=None, compiled=False) -> None:
    """One image of `task`: seconds (scaled to plan.steps when run shorter) and peak."""
    params = matrix.sampler_params(task, steps, cache)
    compile_s = None
    if compiled:
        compile_s = matrix.run(pipe, task, params, plan.side)[0]  # warm-up: compilation
    else:  # warm-up: one step (the first CUDA calls set up their kernels)
        matrix.run(pipe, task, matrix.sampler_params(task, 2, cache), plan.side)
    seconds, peak = matrix.run(pipe, task, params, plan.side)
    scale = (plan.steps - 1) / (steps - 1)
    full = seconds * scale
    notes = [f"{steps} timesteps" + (f", ×{plan.steps - 1}/{steps - 1} (scaled)" * (scale != 1))]
    if compile_s is not None:
        compile_s -= seconds
        notes.append(f"compilation {compile_s:.1f} s (first image minus second)")
    check = f"{name}{' compiled' * compiled} {task}{', TaylorSeer' * (cache != 'none')}"
    figure = f"{full:.2f} s, peak {peak:.2f} GiB" if plan.device.type == "cuda" else f"{full:.2f} s"
    value = peak if goal in ("int8", "nf4") else full
    bound, status = ("", "ok") if goal is None else results.goal(goal, value, plan)
    results.add(
        "b. 7B", check, figure, bound, status, "; ".join(notes),
        seconds=full, measured_seconds=seconds, peak_GiB=peak, timesteps=steps,
        compile_seconds=compile_s,
    )  # fmt: skip


def architecture(results: Results, plan: Plan, tmp: Path) -> None:
    full, short = plan.full, plan.short

    def eager_full():
        pipe = build(plan, full, tmp)
        timed(results, plan, pipe, full, "t2i", "none", plan.steps, "t2i")
        timed(results, plan, pipe, full, "t2i", "taylorseer", plan.steps, "t2i-taylorseer")

    def quantised(name):
        pipe = build(plan, name, tmp)
        timed(results, plan, pipe, name, "t2i", "none", short, name)
        timed(results, plan, pipe, name, "t2i", "taylorseer", short)

    def edit_then_compiled():
        pipe = build(plan, full, tmp)
        timed(results, plan, pipe, full, "edit", "none", short)
        if plan.smoke:
            results.add("b. 7B", f"{full} compiled t2i", status="skipped", note=NO_CPU_COMPILE)
            return
        compile_decoder(pipe.net.language_model.model.layers)
        timed(results, plan, pipe, full, "t2i", "none", short, compiled=True)
        timed(results, plan, pipe, full, "t2i", "taylorseer", short, compiled=True)

    attempt(results, "b. 7B", f"{full} t2i", eager_full)
    for name in ("int8", "nf4"):
        attempt(results, "b. 7B", f"{name} t2i", lambda name=name: quantised(name))
    attempt(results, "b. 7B", f"{full} edit, compiled", edit_then_compiled)


def offload(results: Results, plan: Plan, tmp: Path) -> None:
    """Run last: the 7B weights are drawn in CPU memory first, which takes a minute or two."""

    def cell():
        pipe = build(plan, "offload", tmp)
        timed(results, plan, pipe, "offload (20 GiB)", "t2i", "none", plan.short)

    attempt(results, "b. 7B", "offload t2i", cell)


# -- c. interactive figures --------------------------------------------------------------


def frames_session(pipe, side: int, frames: int = 8) -> Session:
    """A session holding `frames` images of side² and their instructions."""
    session = Session(pipe)
    for k in range(frames):
        session.add_text("move forward")
        session.add_image(Image.new("RGB", (side, side), (30 * k, 120, 200 - 20 * k)), seed=k)
    return session


def interactive(results: Results, plan: Plan, tmp: Path) -> None:
    pipe = build(plan, plan.full, tmp)
    side = plan.nav_side
    session = frames_session(pipe, side)
    for cache in ("none", "taylorseer"):
        params = GenerationParams(
            height=side, width=side, feature_cache=cache, num_timesteps=plan.steps
        )
        navigate(session, ["forward"], params)  # warm-up
        session.rewind(2)
        sync()
        started = time.perf_counter()
        navigate(session, ["forward", "turn_left"], params)
        sync()
        fps = 2 / (time.perf_counter() - started)
        session.rewind(4)
        bound, status = ("", "ok") if cache != "none" else results.goal("navigation", fps, plan)
        note = f"{plan.steps} timesteps, app defaults; 2 steps after 8 and 9 frames"
        results.add(
            "c. interactive", f"navigation {side}²{', TaylorSeer' * (cache != 'none')}",
            f"{fps:.2f} frames/s", bound, status, note, frames_per_second=fps,
        )  # fmt: skip
    pipe.generate_text(session.main, max_new_tokens=4)  # warm-up
    sync()
    started = time.perf_counter()
    out = pipe.generate_text(session.main, max_new_tokens=plan.tokens)
    sync()
    decoded = len(out.token_ids) + (len(out.token_ids) < plan.tokens)  # the stop token too
    rate = decoded / (time.perf_counter() - started)
    bound, status = results.goal("text", rate, plan)
    note = f"{decoded} tokens, greedy, after the {session.main.length}-token session"
    results.add(
        "c. interactive", "text generation", f"{rate:.1f} tokens/s", bound, status, note,
        tokens_per_second=rate,
    )  # fmt: skip


# -- d. profiler -------------------------------------------------------------------------

# a missed goal -> (profile, the step profiled)
STEPS = {"int8": ("int8", "t2i"), "nf4": ("nf4", "t2i"), "navigation": ("full", "navigation")}
STEPS |= {"t2i": ("full", "t2i"), "t2i-taylorseer": ("full", "t2i"), "text": ("full", "text")}


def profiler(results: Results, plan: Plan, tmp: Path) -> None:
    missed = {"t2i", "navigation", "text"} if plan.smoke else results.missed  # smoke: each step
    if not missed:
        results.add("d. profiler", "every goal met", note="nothing to profile")
    wanted: dict[str, set[str]] = {}
    for key in missed:
        name, step = STEPS[key]
        wanted.setdefault(plan.full if name == "full" else name, set()).add(step)
    for name, steps in wanted.items():

        def run(name=name, steps=steps):
            pipe = build(plan, name, tmp)
            for step in sorted(steps):
                what, fn = step_fn(pipe, plan, step)
                top = profile_once(results.out, plan.device, f"{name}: {what}", fn)
                results.add(
                    "d. profiler", f"{name}: {what}", ", ".join(top), "", "ok",
                    "top 3 by time; the table is in profiler.txt",
                )  # fmt: skip

        attempt(results, "d. profiler", name, run)


def step_fn(pipe, plan: Plan, step: str):
    """(description, callable) of one denoising step of `step`, or one decoded token."""
    if step == "text":
        ctx = frames_session(pipe, plan.nav_side).main
        return "one decoded token after 8 frames", lambda: pipe.generate_text(ctx, 1)
    if step == "navigation":
        s, side = frames_session(pipe, plan.nav_side), plan.nav_side
        text = s.main.prefix(s.text_mark.length, s.text_mark.rope)
        branches, what = [s.main, text, s.image_dropped], f"one {side}² step after 8 frames"
    else:
        side = plan.side
        branches, what = list(matrix.contexts(pipe, "t2i", side)), f"one {side}² t2i step"
    grid = side // pipe.config.latent_downsample
    n = grid * grid
    x = torch.randn(n, pipe.config.patch_latent_dim, generator=torch.Generator().manual_seed(0))
    routing = Routing.latent_spans(n + 2, [(1, n + 1)], pipe.device)
    t = torch.tensor(0.5)
    return f"{what}, 3 branches", lambda: pipe.velocity(x, t, (grid, grid), branches, routing)


def profile_once(out: Path, device: torch.device, label: str, fn) -> list[str]:
    """fn once as warm-up, then once under torch.profiler: its table of the top kernels
    by time is appended to out/profiler.txt; returns the top three names."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda
    with profile(activities=activities, profile_memory=True) as prof:
        fn()
        sync()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = prof.key_averages()
    table = events.table(sort_by=key, row_limit=15, max_name_column_width=60)
    with open(out / "profiler.txt", "a", encoding="utf-8") as f:
        f.write(f"## {label}\n\n{table}\n\n")
    return [e.key for e in sorted(events, key=lambda e: getattr(e, key), reverse=True)[:3]]


# -- the run -----------------------------------------------------------------------------


def header(plan: Plan) -> dict:
    from importlib.metadata import version
    from importlib.util import find_spec

    bnb = version("bitsandbytes") if find_spec("bitsandbytes") else "not installed"
    cuda = plan.device.type == "cuda"
    mode = "smoke: CPU, tiny model, few steps" if plan.smoke else "CUDA, 7B architecture"
    return {
        "mode": mode,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "bitsandbytes": bnb,
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


@torch.no_grad()  # scoped: tests call main() in-process
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, few steps")
    parser.add_argument("--minutes", type=float, default=8.0, help="no cell starts after")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("the GPU check needs a CUDA device (or --smoke for the CPU)", file=sys.stderr)
        return 2
    plan = Plan.make(args.smoke)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profiler.txt").unlink(missing_ok=True)
    results = Results(args.out, header(plan), args.minutes)
    results.write()
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            correctness(results, plan, Path(tmp))
            architecture(results, plan, Path(tmp))
            attempt(results, "c. interactive", "navigation and text",
                    lambda: interactive(results, plan, Path(tmp)))  # fmt: skip
            profiler(results, plan, Path(tmp))
            offload(results, plan, Path(tmp))
    except KeyboardInterrupt:  # the script's time limit: keep what was measured
        results.add("run", "stopped", status="skipped", note="stopped by the time limit")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

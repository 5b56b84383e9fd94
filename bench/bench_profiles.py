"""Memory profiles on the CPU: error vs fp32 on the tiny model, and the 7B architecture.

    python bench/bench_profiles.py                  # tiny: every profile, TaylorSeer
    python bench/bench_profiles.py --full nf4       # 7B architecture, random weights, nf4
    python bench/bench_profiles.py --full int8      # (one profile per process: clean peaks)

Tiny: the first-step velocity and the 8-step latent of each profile against fp32 (same
noise, same context), relative L2 error; and the TaylorSeer cache against no cache.
Full: `BagelConfig.official_7b()` built on meta and materialised tensor by tensor in the
profile (random weights; a quantised linear is drawn in bf16 and quantised at once, so
the bf16 model never exists), then weight bytes, one denoising step at 256² after a
16-token text (main branch) with its time and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import copy
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bagel.checkpoint import load  # noqa: E402
from bagel.config import BagelConfig  # noqa: E402
from bagel.flow import SamplerParams  # noqa: E402
from bagel.llm import Routing  # noqa: E402
from bagel.model import Bagel  # noqa: E402
from bagel.pipeline import BagelPipeline  # noqa: E402
from bagel.profiles import (  # noqa: E402
    Profile,
    parse_profile,
    quantised_weight,
    swap_quantised_linears,
    weight_bytes,
)
from bagel.tiny import make_tiny  # noqa: E402
from bagel.tokenizer import BagelTokenizer, write_tiny_tokenizer  # noqa: E402
from bagel.vae import AutoEncoder  # noqa: E402

TINY_PROFILES = ("fp32", "bf16", "int8", "nf4")
CPU = torch.device("cpu")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def tiny_sample(pipe: BagelPipeline, params: SamplerParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(first-step velocity, final latent) for a fixed text and noise at 64²."""
    ctx, dropped = pipe.new_context(), pipe.new_context()
    pipe.append_text(ctx, "a lighthouse on a cliff at dusk")
    noise = torch.randn(16, 8, 8, generator=torch.Generator().manual_seed(1))
    x = noise.reshape(16, 4, 2, 4, 2).permute(1, 3, 2, 4, 0).reshape(16, 64)
    with torch.inference_mode():
        v = pipe.velocity(x, torch.tensor(1.0), (4, 4), [ctx], Routing.latent_spans(18, [(1, 17)]))
    latent = pipe.generate_image(ctx, 64, 64, params, cfg_text_ctx=dropped, noise=noise).latent
    return v, latent


def tiny(steps: int) -> None:
    params = SamplerParams(num_timesteps=steps + 1, cfg_img_scale=1.0, cfg_interval=(0.0, 1.0))
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_tiny(Path(tmp) / "tiny", seed=0)
        ref_v, ref_latent = tiny_sample(load(folder, device="cpu"), params)
        print(f"| profile | velocity rel. error | {steps}-step latent rel. error |")
        print("|---|---|---|")
        for name in TINY_PROFILES:
            v, latent = tiny_sample(load(folder, device="cpu", profile=name), params)
            err_v, err_l = relative_error(v, ref_v), relative_error(latent, ref_latent)
            print(f"| {name} | {err_v:.2e} | {err_l:.2e} |")
        pipe = load(folder, device="cpu")
        print("\n| feature cache (fp32, 50 steps) | decoder runs | latent rel. error vs none |")
        print("|---|---|---|")
        base = SamplerParams(cfg_img_scale=1.0)
        ref = tiny_sample(pipe, base)[1]
        for interval in (1, 2, 3, 4):
            cached = SamplerParams(
                cfg_img_scale=1.0, feature_cache="taylorseer", feature_cache_interval=interval
            )
            runs = count_decoder_runs(pipe, cached)
            err = relative_error(tiny_sample(pipe, cached)[1], ref)
            print(f"| taylorseer, interval {interval} | {runs} of 49 | {err:.2e} |")


def count_decoder_runs(pipe: BagelPipeline, params: SamplerParams) -> int:
    from bagel.taylorseer import is_full_step

    return sum(is_full_step(s, params.feature_cache_interval) for s in range(49))


# -- the 7B architecture ------------------------------------------------------------------


def materialise(
    config: BagelConfig, profile: Profile, dtype: torch.dtype, device: torch.device = CPU
) -> Bagel:
    """`Bagel(config)` with random weights in `profile` on `device`, one tensor at a time.

    A quantised linear is drawn and quantised once per shape and deep-copied to the other
    layers (bitsandbytes' NF4 quantisation takes ~5 s per MLP matrix on this CPU): every
    layer holds its own copy, so the memory is real; the values repeat across layers.
    """
    torch.manual_seed(0)
    with torch.device("meta"):
        net = Bagel(config)
    swapped = swap_quantised_linears(net, profile.weights, dtype) if profile.quantised else set()
    drawn: dict[tuple[int, int], nn.Module] = {}
    for name in sorted(swapped):
        linear = net.get_submodule(name)
        shape = (linear.out_features, linear.in_features, linear.bias is not None)
        if shape not in drawn:
            weight = torch.randn(shape[:2], dtype=dtype, device=device) * 0.02
            linear.weight = quantised_weight(weight, profile.weights, device)
            if linear.bias is not None:
                bias = torch.zeros(shape[0], dtype=dtype, device=device)
                linear.bias = nn.Parameter(bias, requires_grad=False)
            drawn[shape] = linear
            continue
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent), child, copy.deepcopy(drawn[shape]))
    for module_name, module in net.named_modules():
        if module_name in swapped:
            continue
        for leaf, param in list(module.named_parameters(recurse=False)):
            fresh = torch.empty(param.shape, dtype=dtype, device=device).normal_(0.0, 0.02)
            setattr(module, leaf, nn.Parameter(fresh, requires_grad=False))
    return net.eval().requires_grad_(False)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def full(name: str, side: int) -> None:
    config = BagelConfig.official_7b()
    profile = parse_profile(name, CPU)
    dtype = torch.bfloat16
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Bagel(config).state_dict().items()}
    print("| profile | weights of the BAGEL module (GiB, from the shapes) |")
    print("|---|---|")
    for kind in ("fp32", "bf16", "int8", "nf4"):
        other, layers = weight_bytes(shapes, kind, torch.float32 if kind == "fp32" else dtype)
        print(f"| {kind} | {(other + sum(layers)) / 2**30:.2f} |")
    started = time.perf_counter()
    net = materialise(config, profile, dtype)
    built = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_tokenizer(tmp)
        tokenizer = BagelTokenizer.from_folder(tmp)
    ae = AutoEncoder(config.ae).eval().requires_grad_(False)
    pipe = BagelPipeline(net, ae, tokenizer)
    print(f"\n{name}: materialised in {built:.0f} s, peak RSS {peak_rss_gib():.1f} GiB")
    ctx = pipe.new_context()
    pipe.append_text(ctx, "a lighthouse on a cliff at dusk, oil painting, warm light")
    grid = side // 16
    n = grid * grid
    x = torch.randn(n, 64, generator=torch.Generator().manual_seed(0))
    routing = Routing.latent_spans(n + 2, [(1, n + 1)])
    times = []
    for _ in range(2):
        started = time.perf_counter()
        v = pipe.velocity(x, torch.tensor(1.0), (grid, grid), [ctx], routing)
        times.append(time.perf_counter() - started)
    assert torch.isfinite(v).all()
    print(
        f"{name}: one denoising step at {side}² (main branch, {ctx.length}-token context): "
        f"{times[0]:.1f} s first, {times[1]:.1f} s second; peak RSS {peak_rss_gib():.1f} GiB"
    )


@torch.no_grad()  # scoped: tests call main() in-process
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", choices=("bf16", "int8", "nf4"), help="the 7B architecture")
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8, help="tiny: denoising steps")
    args = parser.parse_args()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.full:
        full(args.full, args.side)
    else:
        tiny(args.steps)


if __name__ == "__main__":
    main()

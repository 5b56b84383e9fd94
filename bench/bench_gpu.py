"""GPU checks and full-size timings (needs CUDA; CI never runs this).

    python bench/bench_gpu.py [--skip-full] [--steps 50] [--json OUT.json]
    python bench/bench_gpu.py --smoke   # part 2 on the CPU with the tiny config (a dry run)

Part 1 — faithfulness of the CUDA paths, on the tiny random checkpoint:
- one denoising step (velocity, three CFG branches, a context of a few hundred tokens)
  on CUDA float32 and CUDA bfloat16 with the `sdpa` backend, against the CPU float32
  `math` backend (the exact reference);
- a whole tiny generation (same noise) on CUDA bfloat16 against CPU float32, and three
  frames of diffusion forcing (pyramid, window 2: the frame-masked attention);
- the attention kernel alone at the 7B shapes (28 query heads, 4 KV heads, head dim
  128, a 1024x1024 query block of 4098 rows over three cached chunks) in bfloat16,
  `sdpa` against `math`.

Part 2 — BAGEL-7B-MoT's architecture with random weights in bfloat16 (no checkpoint is
needed for timings): prefill throughput, one denoising step at 1024x1024 with 1 / 3
batched / 3 sequential branches, the project's chunked attention vs the reference's
copy-and-scatter at several context lengths, a whole 1024x1024 generation with CFG, the
VAE and the ViT, and the compute floor of a step (its FLOPs at the matmul rate measured
in the same process). Times are CUDA-synchronised medians; nothing is asserted on time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bagel.attention import _flash_attn_func, attend  # noqa: E402
from bagel.checkpoint import load  # noqa: E402
from bagel.config import BagelConfig  # noqa: E402
from bagel.flow import SamplerParams  # noqa: E402
from bagel.llm import Routing  # noqa: E402
from bagel.model import Bagel  # noqa: E402
from bagel.pipeline import BagelPipeline  # noqa: E402
from bagel.tiny import make_tiny  # noqa: E402
from bagel.tokenizer import BagelTokenizer, write_tiny_tokenizer  # noqa: E402
from bagel.vae import AutoEncoder  # noqa: E402
from bench.bench_attention import copy_scatter_baseline  # noqa: E402
from bench.common import append_random_text, fill_context, time_modes  # noqa: E402

RESULTS: dict[str, object] = {}


def record(key: str, value: object, unit: str = "") -> None:
    RESULTS[key] = value
    shown = f"{value:.4g}" if isinstance(value, float) else value
    print(f"{key:<52} {shown} {unit}", flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def synced(fn):
    def call():
        out = fn()
        sync()
        return out

    return call


def image_query(pipe: BagelPipeline, side: int, generator: torch.Generator):
    """Noisy latent patches of a side x side latent grid at t = 0.5, with its routing."""
    n = side * side
    x = torch.randn(n, pipe.config.patch_latent_dim, generator=generator)
    routing = Routing.latent_spans(n + 2, [(1, n + 1)], pipe.device)
    return x, torch.tensor(0.5), (side, side), routing


def cfg_branches(pipe: BagelPipeline, history: int, generator: torch.Generator):
    """[main, text_dropped, image_dropped] after `history` tokens and a 32-token prompt."""
    main = fill_context(pipe, history, generator)
    append_random_text(pipe, main, 32, generator)
    image_dropped = pipe.new_context()
    append_random_text(pipe, image_dropped, 32, generator)
    return [main, main.prefix(history, history), image_dropped]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().cpu(), b.float().cpu()
    return float((a - b).norm() / b.norm())


# -- part 1 ---------------------------------------------------------------------------


def check_tiny(folder: Path) -> None:
    print("\n## tiny checkpoint: CUDA paths vs CPU float32 math", flush=True)
    make_tiny(folder, seed=0)
    pipes = {
        "cpu_f32_math": load(folder, device="cpu", dtype="float32", attn_backend="math"),
        "cuda_f32_sdpa": load(folder, device="cuda", dtype="float32", attn_backend="sdpa"),
        "cuda_bf16_sdpa": load(folder, device="cuda", dtype="bfloat16", attn_backend="sdpa"),
    }
    velocities = {}
    for name, pipe in pipes.items():
        generator = torch.Generator().manual_seed(0)
        branches = cfg_branches(pipe, 300, generator)
        x, t, grid, routing = image_query(pipe, pipe.config.max_latent_size, generator)
        velocities[name] = pipe.velocity(x, t, grid, branches, routing).float().cpu()
    ref = velocities["cpu_f32_math"]
    for name in ("cuda_f32_sdpa", "cuda_bf16_sdpa"):
        record(f"tiny velocity rel. error {name}", relative_error(velocities[name], ref))
        record(
            f"tiny velocity max abs diff {name}",
            float((velocities[name] - ref).abs().max()),
        )
    params = SamplerParams(num_timesteps=20, cfg_text_scale=4.0, cfg_img_scale=1.5)
    latents = {}
    for name in ("cpu_f32_math", "cuda_bf16_sdpa"):
        pipe = pipes[name]
        ctx = pipe.new_context()
        pipe.append_text(ctx, "a red cube on a table")
        image_dropped = ctx.fork()
        out = pipe.generate_image(
            ctx,
            128,
            128,
            params,
            cfg_text_ctx=pipe.new_context(),
            cfg_img_ctx=image_dropped,
            generator=torch.Generator().manual_seed(1),
        )
        latents[name] = out.latent.cpu()
    record(
        "tiny 20-step generation latent rel. error bf16",
        relative_error(latents["cuda_bf16_sdpa"], latents["cpu_f32_math"]),
    )
    forced = {}
    for name in ("cpu_f32_math", "cuda_bf16_sdpa"):
        pipe = pipes[name]
        ctx = pipe.new_context()
        pipe.append_text(ctx, "a ball rolling down a slope")
        frames = pipe.predict_frames(
            ctx,
            3,
            64,
            64,
            params,
            window=2,
            schedule="pyramid",
            cfg_text_ctx=pipe.new_context(),
            cfg_img_ctx=ctx.fork(),
            generator=torch.Generator().manual_seed(2),
        )
        forced[name] = torch.stack([f.latent.cpu() for f in frames])
    record(
        "tiny diffusion forcing (3 frames, pyramid, window 2) latent rel. error bf16",
        relative_error(forced["cuda_bf16_sdpa"], forced["cpu_f32_math"]),
    )


def check_kernel_7b_shapes() -> None:
    print("\n## attention kernel at 7B shapes, bfloat16: sdpa vs math", flush=True)
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, device="cuda", dtype=torch.bfloat16)

    q = rnd(28, 4098, 128)
    k, v = rnd(4, 4098, 128), rnd(4, 4098, 128)
    cached = [(rnd(4, n, 128), rnd(4, n, 128)) for n in (256, 1024, 3000)]
    for causal in (False, True):
        fast = attend(q, cached, k, v, causal, "sdpa").float()
        exact = attend(q, cached, k, v, causal, "math").float()
        record(f"kernel rel. error sdpa (causal={causal})", relative_error(fast, exact))


# -- part 2 ---------------------------------------------------------------------------


def random_model(tokenizer_dir: Path, config: BagelConfig, device: str) -> BagelPipeline:
    """The architecture with random weights, built as the loader builds it (on meta, then
    storage in the target dtype), so the bf16 weights never exist in float32."""
    torch.manual_seed(0)
    with torch.device("meta"):
        net = Bagel(config).to(torch.bfloat16)
    net = net.to_empty(device=device)
    for tensor in net.state_dict().values():
        tensor.normal_(0.0, 0.02)
    with torch.device(device):
        ae = AutoEncoder(config.ae)
    write_tiny_tokenizer(tokenizer_dir)
    tokenizer = BagelTokenizer.from_folder(tokenizer_dir)
    pipe = BagelPipeline(net.eval().requires_grad_(False), ae.eval(), tokenizer)
    params = sum(p.numel() for p in net.parameters())
    record("7B: parameters of the BAGEL module", params / 1e9, "billion")
    record("7B: attention backend", pipe.backend)
    return pipe


def matmul_rate(device: torch.device) -> float:
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = time_modes({"mm": synced(lambda: a @ b)}, reps=20, warmup=3)["mm"]
    return 2 * n**3 / (ms / 1e3)


def step_flops(config: BagelConfig, rows: int, kv_lengths: list[int]) -> float:
    """Matmul FLOPs of one denoising forward: the generation expert's projections and MLP
    for every query row of every branch, plus attention (QK^T and PV) over each
    branch's context and the query block."""
    llm = config.llm
    h, kvh, d = llm.hidden_size, llm.num_key_value_heads * llm.head_dim, llm.head_dim
    per_token = 2 * (2 * h * h + 2 * h * kvh + 3 * h * llm.intermediate_size)
    flops = 0.0
    for kv in kv_lengths:
        attn = 4 * llm.num_attention_heads * d * rows * (kv + rows)
        flops += llm.num_hidden_layers * (per_token * rows + attn)
        flops += 2 * 2 * rows * h * config.patch_latent_dim  # vae2llm, llm2vae
    return flops


def time_7b(pipe: BagelPipeline, steps: int) -> None:
    print("\n## BAGEL-7B-MoT architecture, random weights, bfloat16", flush=True)
    generator = torch.Generator().manual_seed(0)
    cuda = pipe.device.type == "cuda"
    if cuda:
        record("7B: weights on GPU", torch.cuda.memory_allocated() / 2**30, "GiB")
    rate = matmul_rate(pipe.device)
    record("matmul rate (8192^3 bf16, this process)", rate / 1e12, "TFLOP/s")

    ctx = pipe.new_context()
    prefill_ms = time_modes(
        {"prefill": synced(lambda: append_random_text(pipe, ctx.fork(), 1024, generator))},
        reps=5,
        warmup=2,
    )["prefill"]
    record("7B: prefill 1024 text tokens", prefill_ms, "ms")
    record("7B: prefill throughput", 1024 / prefill_ms * 1e3, "tokens/s")

    side = min(64, pipe.config.max_latent_size)  # 64: 1024x1024 pixels (128x128 latent)
    size = side * pipe.config.latent_downsample
    x, t, grid, routing = image_query(pipe, side, generator)
    rows = routing.num_rows
    branches = cfg_branches(pipe, 1024, generator)

    def velocity(bs):
        return pipe.velocity(x, t, grid, bs, routing)

    ms = time_modes(
        {
            "one": synced(lambda: velocity(branches[:1])),
            "batched": synced(lambda: velocity(branches)),
            "sequential": synced(lambda: [velocity([b]) for b in branches]),
        },
        reps=10,
        warmup=2,
    )
    record("7B step 1024^2, ctx 1056: 1 branch", ms["one"], "ms")
    record("7B step 1024^2, ctx 1056: 3 branches batched", ms["batched"], "ms")
    record("7B step 1024^2, ctx 1056: 3 branches sequential", ms["sequential"], "ms")
    floor = step_flops(pipe.config, rows, [b.length for b in branches]) / rate * 1e3
    record("7B step 1024^2, 3 branches: compute floor", floor, "ms")
    record("7B step 1024^2, 3 branches: floor / batched", floor / ms["batched"])
    one_floor = step_flops(pipe.config, rows, [branches[0].length]) / rate * 1e3
    record("7B step 1024^2, 1 branch: floor / measured", one_floor / ms["one"])
    if cuda:
        record("7B peak memory so far", torch.cuda.max_memory_allocated() / 2**30, "GiB")

    print("\n## chunked attention vs copy-and-scatter, 1 branch, 4098 query rows", flush=True)
    for length in (1024, 4096, 16384):
        main = fill_context(pipe, length, generator)
        with copy_scatter_baseline():
            baseline_out = velocity([main])
        record(
            f"ctx {length:>5}: velocity rel. diff to baseline",
            relative_error(velocity([main]), baseline_out),
        )

        def baseline(main=main):
            with copy_scatter_baseline():
                return velocity([main])

        ms = time_modes(
            {"project": synced(lambda main=main: velocity([main])), "baseline": synced(baseline)},
            reps=10,
            warmup=2,
        )
        record(f"ctx {length:>5} ({len(main.spans)} blocks): project", ms["project"], "ms")
        record(f"ctx {length:>5}: copy-and-scatter baseline", ms["baseline"], "ms")
        record(f"ctx {length:>5}: baseline / project", ms["baseline"] / ms["project"])
        del main

    print(f"\n## whole generation, 1024x1024, {steps} steps", flush=True)
    for name, img_scale in (("text-to-image (2 branches)", 1.0), ("with image CFG (3)", 2.0)):
        params = SamplerParams(num_timesteps=steps, cfg_text_scale=4.0, cfg_img_scale=img_scale)
        sync()
        start = time.perf_counter()
        pipe.generate_image(
            branches[0],
            size,
            size,
            params,
            cfg_text_ctx=branches[1],
            cfg_img_ctx=branches[2],
            generator=torch.Generator().manual_seed(0),
        )
        sync()
        record(f"7B generation {name}, incl. VAE decode", time.perf_counter() - start, "s")

    pixels = torch.rand(1, 3, size, size, device=pipe.device) * 2 - 1
    latent = torch.randn(1, pipe.config.latent_channels, 2 * side, 2 * side, device=pipe.device)
    vit_side = pipe.config.vit_max_side
    vit_pixels = torch.rand(3, vit_side, vit_side, device=pipe.device) * 2 - 1
    ms = time_modes(
        {
            "encode": synced(lambda: pipe.ae.encode(pixels, sample=False)),
            "decode": synced(lambda: pipe.ae.decode(latent)),
            "vit": synced(lambda: pipe.net.vit_tokens(vit_pixels)),
        },
        reps=5,
        warmup=1,
    )
    record("VAE encode 1024^2 (float32)", ms["encode"], "ms")
    record("VAE decode 1024^2 (float32)", ms["decode"], "ms")
    record("ViT + connector 980^2 (4900 patches)", ms["vit"], "ms")
    if cuda:
        record("peak memory", torch.cuda.max_memory_allocated() / 2**30, "GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-full", action="store_true", help="only the tiny checks")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--smoke", action="store_true", help="part 2 on CPU, tiny config")
    args = parser.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
            time_7b(random_model(Path(tmp), BagelConfig.tiny(), "cpu"), steps=3)
        return
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA device")
    print(
        f"# torch {torch.__version__}, {torch.cuda.get_device_name()}, "
        f"flash-attn {'installed' if _flash_attn_func else 'not installed'}"
    )
    with tempfile.TemporaryDirectory(prefix="bagel-gpu-") as tmp:
        with torch.inference_mode():
            check_tiny(Path(tmp) / "tiny")
            check_kernel_7b_shapes()
            if not args.skip_full:
                model = random_model(Path(tmp) / "tok", BagelConfig.official_7b(), "cuda")
                time_7b(model, args.steps)
    if args.json:
        args.json.write_text(json.dumps(RESULTS, indent=1, default=str))


if __name__ == "__main__":
    main()

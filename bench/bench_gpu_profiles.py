"""Per memory profile on one GPU: peak memory and time of a 1024² image, 50 steps.

    python bench/bench_gpu_profiles.py                 # CUDA: the full matrix, 7B, random weights
    python bench/bench_gpu_profiles.py --smoke         # the same code path, tiny, on CPU

For each profile (bf16, int8, nf4, offload with a 20 GiB budget): the app's text-to-image
defaults (text context; 3 branches) and edit defaults (a 1024² input image and an
instruction; 3 branches), the TaylorSeer cache off and on, eager and compiled
(`bagel.compiled.compile_decoder`, its first image untimed as warm-up). The weights are
random (`bench_profiles.materialise`: built on meta, drawn per tensor in the profile), so
the figures are the real architecture's cost, not its output.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bagel.compiled import compile_decoder  # noqa: E402
from bagel.config import BagelConfig  # noqa: E402
from bagel.flow import SamplerParams  # noqa: E402
from bagel.pipeline import BagelPipeline  # noqa: E402
from bagel.profiles import parse_profile, plan_offload, stream_layers, weight_bytes  # noqa: E402
from bagel.tokenizer import BagelTokenizer, write_tiny_tokenizer  # noqa: E402
from bagel.vae import AutoEncoder  # noqa: E402
from bench.bench_profiles import materialise  # noqa: E402

OFFLOAD_BUDGET = 20 * 2**30
PROMPT = "a lighthouse on a cliff at dusk, oil painting, warm light"


def build(config: BagelConfig, name: str, device: torch.device, tokenizer_dir: Path):
    """A pipeline with random weights in profile `name` (offload: layers past the budget
    stay in CPU memory and are streamed)."""
    profile = parse_profile(name, device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if not profile.offload:
        net = materialise(config, profile, dtype, device)
    else:
        net = materialise(config, profile, dtype, torch.device("cpu"))
        shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        resident = plan_offload(*weight_bytes(shapes, profile.weights, dtype), OFFLOAD_BUDGET)
        layers = net.language_model.model.layers
        streamed = [layer for layer, on_gpu in zip(layers, resident, strict=True) if not on_gpu]
        for module in net.children():
            if module is not net.language_model:
                module.to(device)
        for part in (net.language_model.model.embed_tokens, net.language_model.model.norm):
            part.to(device)
        net.language_model.model.norm_moe_gen.to(device)
        net.language_model.lm_head.to(device)
        for layer, on_gpu in zip(layers, resident, strict=True):
            if on_gpu:
                layer.to(device)
        stream_layers(streamed, device)
    ae = AutoEncoder(config.ae).to(device).eval().requires_grad_(False)
    return BagelPipeline(net, ae, BagelTokenizer.from_folder(tokenizer_dir))


def contexts(pipe: BagelPipeline, task: str, side: int):
    """(main, text-dropped, image-dropped) as a session holds them for `task`."""
    main, texts = pipe.new_context(), pipe.new_context()
    if task == "edit":
        picture = Image.new("RGB", (side, side), (90, 140, 200))
        pipe.append_image(main, picture, generator=torch.Generator().manual_seed(0))
    text_dropped = main.prefix(main.length, main.rope)
    for ctx in (main, texts):
        pipe.append_text(ctx, PROMPT)
    return main, text_dropped, texts


def run(pipe: BagelPipeline, task: str, params: SamplerParams, side: int) -> tuple[float, float]:
    """(seconds, peak GiB of GPU memory, 0 on CPU) of one image."""
    main, text, img = contexts(pipe, task, side)
    cuda = pipe.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    pipe.generate_image(
        main, side, side, params, cfg_text_ctx=text, cfg_img_ctx=img,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return seconds, torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0


def sampler_params(task: str, steps: int, cache: str) -> SamplerParams:
    """The app's defaults for `task` ("t2i" or "edit") with `steps` timesteps and the
    feature cache `cache` ("none" or "taylorseer")."""
    base = SamplerParams() if task == "t2i" else SamplerParams.edit()
    return SamplerParams(**{**base.__dict__, "num_timesteps": steps, "feature_cache": cache})


def matrix(config, names, device, side, steps, compiled_for) -> list[dict[str, object]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_tokenizer(tmp)
        for name in names:
            pipe = build(config, name, device, Path(tmp))
            for compiled in (False, True) if name in compiled_for else (False,):
                if compiled:
                    compile_decoder(pipe.net.language_model.model.layers)
                for task in ("t2i", "edit"):
                    for cache in ("none", "taylorseer"):
                        params = sampler_params(task, steps, cache)
                        if compiled:
                            run(pipe, task, params, side)  # warm-up: compilation
                        seconds, peak = run(pipe, task, params, side)
                        row = dict(profile=name, compiled=compiled, task=task, cache=cache)
                        rows.append(
                            {**row, "seconds": round(seconds, 4), "peak_GiB": round(peak, 2)}
                        )
                        print(json.dumps(rows[-1]), flush=True)
            del pipe
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


@torch.no_grad()  # scoped: tests call main() in-process
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny config on CPU, 3 steps")
    parser.add_argument("--profiles", default="bf16,int8,nf4,offload")
    parser.add_argument("--steps", type=int, default=50, help="timesteps (steps + 1)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if args.smoke:
        rows = matrix(BagelConfig.tiny(), ["fp32", "int8", "nf4"], torch.device("cpu"), 32, 3, ())
    else:
        if not torch.cuda.is_available():
            sys.exit("bench_gpu_profiles.py needs a CUDA device (or --smoke)")
        print(f"# torch {torch.__version__}, {torch.cuda.get_device_name()}")
        names = args.profiles.split(",")
        config = BagelConfig.official_7b()
        rows = matrix(config, names, torch.device("cuda"), 1024, args.steps, ("bf16",))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

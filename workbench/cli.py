"""The `workbench` command: a dispatch table of subcommands, no work at import time.

Exit codes: 0 ok, 2 bad input (a file, argument or checkpoint the user can fix),
1 any other failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

DEFAULT_TINY = Path(".cache/tiny-bagel")
RANDOM_WEIGHTS_NOTE = (
    "NOTE: this is a tiny checkpoint with RANDOM weights: its images are noise and its "
    "answers gibberish. Point --model at a real BAGEL-7B-MoT folder (or hub id, when "
    "online) for real output."
)


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from bagel.tiny import make_tiny

    print(make_tiny(args.folder, seed=args.seed))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from bagel.checkpoint import checkpoint_identity, read_header, resolve_folder
    from bagel.config import BagelConfig

    folder = resolve_folder(args.model)
    config = BagelConfig.from_checkpoint(folder)
    counts = {}
    for name in ("ema.safetensors", "ae.safetensors"):
        shapes = read_header(folder / name)
        counts[name] = {
            "tensors": len(shapes),
            "parameters": sum(_numel(s) for s in shapes.values()),
        }
    info = {
        "folder": str(folder),
        "identity": checkpoint_identity(folder),
        "llm": vars(config.llm),
        "vit": vars(config.vit),
        "ae": {**vars(config.ae), "ch_mult": list(config.ae.ch_mult)},
        "max_image_side": config.vae_max_side,
        "weights": counts,
    }
    print(json.dumps(info, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Text-to-image, one edit of that image, one answer about it; files in --out."""
    import torch

    from bagel.checkpoint import load
    from bagel.flow import SamplerParams
    from bagel.interleave import interleave_inference
    from bagel.tiny import make_tiny

    model = args.model
    if model is None:
        model = DEFAULT_TINY
        if not (model / "ema.safetensors").exists():
            print(f"making a tiny random checkpoint in {model}")
            make_tiny(model)
        print(RANDOM_WEIGHTS_NOTE)
    pipe = load(model, device=args.device, dtype=args.dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    side = min(args.size, pipe.config.vae_max_side)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()

    with _progress("text to image", args.steps - 1) as step:
        t2i = interleave_inference(
            pipe,
            [args.prompt],
            image_size=(side, side),
            params=SamplerParams(num_timesteps=args.steps),
            generator=generator,
            progress=step,
        )
    _save(t2i.image, out / "1_text_to_image.png")
    with _progress("edit", args.steps - 1) as step:
        edit = interleave_inference(
            pipe,
            [t2i.image, args.edit],
            params=SamplerParams.edit(num_timesteps=args.steps),
            generator=generator,
            progress=step,
        )
    _save(edit.image, out / "2_edit.png")
    answer = interleave_inference(
        pipe, [edit.image, args.question], understanding=True, max_think_tokens=args.max_tokens
    )
    (out / "3_answer.txt").write_text(answer.text + "\n")
    print(f"3_answer.txt: {answer.text!r}")
    print(f"done in {time.perf_counter() - started:.1f} s; files in {out}")
    return 0


def _save(image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)
    print(f"{path.name}: {image.width}x{image.height}")


def _progress(label: str, total: int):
    """A tqdm bar whose update function fits the pipeline's progress callback."""
    from contextlib import contextmanager

    from tqdm import tqdm

    @contextmanager
    def bar():
        with tqdm(total=total, desc=label, unit="step", leave=False) as t:
            yield lambda done, _total: t.update(done - t.n)

    return bar()


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-tiny", help="write a tiny random checkpoint in the official layout")
    p.add_argument("folder", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_tiny)

    p = sub.add_parser("info", help="describe a checkpoint folder without loading its weights")
    p.add_argument("model")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="text-to-image, an edit and an answer on the embedded default")
    p.add_argument("--model", default=None, help="checkpoint folder or hub id (default: tiny)")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--size", type=int, default=1024, help="square side (capped by the model)")
    p.add_argument("--prompt", default="a red fox in a snowy forest at dawn")
    p.add_argument("--edit", default="make it night, with a full moon")
    p.add_argument("--question", default="What is in this picture?")
    p.add_argument("--max-tokens", type=int, default=64)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from bagel.errors import BagelError

    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.func
    try:
        return command(args)
    except BagelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1

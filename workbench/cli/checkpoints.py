"""`workbench make-tiny` and `workbench info`: checkpoint folders, made and described."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from workbench.cli.common import EXIT_OK


def cmd_make_tiny(args: argparse.Namespace) -> int:
    """Write a tiny random checkpoint in the official layout."""
    from bagel.tiny import make_tiny

    print(make_tiny(args.folder, seed=args.seed))
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    """A checkpoint's config, identity and weight counts as JSON, without loading weights;
    with --profile, the weight bytes each device would hold."""
    from bagel.checkpoint import check_checkpoint, checkpoint_identity, read_header, resolve_folder
    from bagel.config import BagelConfig
    from bagel.errors import CheckpointError

    problems = check_checkpoint(args.model)  # what `load` would refuse, all of it
    if problems:
        raise CheckpointError(
            f"{args.model}: {len(problems)} problem(s) that loading refuses:\n"
            + "\n".join(problems)
        )
    folder = resolve_folder(args.model)
    config = BagelConfig.from_checkpoint(folder)
    counts = {}
    for name in ("ema.safetensors", "ae.safetensors"):
        shapes = read_header(folder / name)
        counts[name] = {
            "tensors": len(shapes),
            "parameters": sum(math.prod(s) for s in shapes.values()),
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
    if args.profile is not None:
        info["memory"] = _memory(folder, args.profile, args.device, args.gpu_memory)
    print(json.dumps(info, indent=2))
    return EXIT_OK


def _memory(folder: Path, profile: str, device: str, gpu_memory: str | None) -> dict[str, object]:
    """`info --profile`: the options checked, then bagel.profiles.profile_memory."""
    import torch
    from accelerate.utils import convert_file_size_to_int

    from bagel.checkpoint import read_header
    from bagel.errors import CheckpointError
    from bagel.profiles import parse_profile, profile_memory

    target = torch.device(device)
    chosen = parse_profile(profile, target)
    if chosen.weights == "df11":
        raise CheckpointError("info --profile df11: not computed (DFloat11 sizes vary by layer)")
    if chosen.offload and gpu_memory is None:
        raise CheckpointError(f"info --profile {chosen.name}: pass --gpu-memory, e.g. 20GiB")
    try:
        budget = None if gpu_memory is None else convert_file_size_to_int(_size(gpu_memory))
    except ValueError as err:
        raise CheckpointError(f"--gpu-memory {gpu_memory!r}: {err}") from err
    return profile_memory(
        read_header(folder / "ema.safetensors"),
        read_header(folder / "ae.safetensors"),
        chosen,
        target,
        budget,
    )


def _size(text: str) -> str | int:
    return int(text) if text.isdigit() else text  # plain digits: bytes

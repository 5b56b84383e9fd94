"""Make a tiny random BAGEL checkpoint in the official folder layout.

    python -m bagel.tiny DIR [--seed 0]

Deterministic for a seed: the same files byte for byte. Weights are random, so
generated images are noise and replies gibberish — the structure, the loading path and
every computation are the real ones. Tests and the default demo use it.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from bagel.checkpoint import AE_WEIGHTS, EMA_WEIGHTS
from bagel.config import BagelConfig
from bagel.embeddings import PositionEmbedding
from bagel.llm import RMSNorm
from bagel.model import Bagel
from bagel.tokenizer import write_tiny_tokenizer
from bagel.vae import AutoEncoder


def make_tiny(folder: str | Path, seed: int = 0, config: BagelConfig | None = None) -> Path:
    """Write a random checkpoint of `config` (default `BagelConfig.tiny()`) into folder."""
    config = config or BagelConfig.tiny()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        net, ae = Bagel(config), AutoEncoder(config.ae)
    net.to_empty(device="cpu")
    ae.to_empty(device="cpu")
    _init_random(net, generator)
    _init_random(ae, generator)
    config.to_files(folder)
    write_tiny_tokenizer(folder, config.llm.vocab_size)
    _save(net.state_dict(), folder / EMA_WEIGHTS)
    _save(ae.state_dict(), folder / AE_WEIGHTS)
    return folder


def _init_random(module: nn.Module, generator: torch.Generator) -> None:
    """Unit-scale activations: linear/conv weights ~ N(0, 1/fan_in), small biases, norm
    scales near 1 (different per expert, so routing mistakes show), exact sin-cos tables."""
    for sub in module.modules():
        if isinstance(sub, PositionEmbedding):
            sub.reset_to_formula()
        elif isinstance(sub, nn.Linear | nn.Conv2d):
            fan_in = sub.weight[0].numel()
            sub.weight.data.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
            if sub.bias is not None:
                sub.bias.data.normal_(0.0, 0.02, generator=generator)
        elif isinstance(sub, nn.Embedding):
            sub.weight.data.normal_(0.0, 1.0, generator=generator)
        elif isinstance(sub, RMSNorm | nn.LayerNorm | nn.GroupNorm):
            sub.weight.data.normal_(1.0, 0.1, generator=generator)
            if getattr(sub, "bias", None) is not None:
                sub.bias.data.normal_(0.0, 0.02, generator=generator)


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    """Atomic write: a temporary file in the same folder, then rename."""
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Make a tiny random BAGEL checkpoint.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_tiny(args.folder, args.seed))


if __name__ == "__main__":
    main()

"""What a `workbench train-world` run is: the model's sizes (`world_config`), the run's
options (`TrainOptions`), and the start of a run's decoder phase from an autoencoder
trained before (`use_autoencoder`)."""

from __future__ import annotations

import dataclasses
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from bagel.checkpoint import AE_WEIGHTS
from bagel.config import BagelConfig
from bagel.errors import InputError

LATENT_PATCH_SIZES = (1, 2)  # 2: a 64 × 64 frame is 16 tokens; 1: 64 tokens


def world_config(hidden: int = 128, latent_patch_size: int = 2) -> BagelConfig:
    """The world model: a 4-layer MoT decoder (hidden 128 by default, 4 heads), a 2-layer
    ViT and a small autoencoder; 64 × 64 frames are 16 latent tokens (64 with latent
    patches of 1) and 25 ViT tokens."""
    llm = dict(
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=4096,
    )
    vit = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=14,
        image_size=14 * 10,
    )
    ae = dict(ch=32, ch_mult=[1, 1, 2, 2], num_res_blocks=1)
    bagel = dict(
        latent_patch_size=latent_patch_size,
        max_latent_size=16 // latent_patch_size,  # 128 pixels a side
        vae_min_side=32,
        vit_min_side=28,
    )
    return BagelConfig.from_dicts(llm, vit, ae, bagel)


@dataclass(frozen=True)
class TrainOptions:
    steps: int = 20000  # decoder steps (phase 2)
    ae_steps: int = 1500  # autoencoder steps (phase 1)
    batch: int = 8
    lr: float = 4e-4
    ae_lr: float = 1e-3
    ae_decoder_every: int = 2  # in phase 2, an autoencoder-decoder step every N steps (0: off)
    ema: float = 0.998
    timestep_shift: float = 2.0  # of the training t distribution (more high-noise t)
    seed: int = 0
    save_minutes: float = 5.0
    max_minutes: float | None = None  # stop (and save) after this long
    render_workers: int = 0  # processes rendering the coming steps' batches (0: inline)
    device: str = "cpu"  # where the model trains ("cuda" on a GPU)
    motion_weight: float = 0.0  # future frames: extra weight of tokens that change (0: off)
    hidden: int = 128  # the decoder's hidden size (a new run only)
    latent_patch_size: int = 2  # latent patch side (a new run only)
    context_noise: float = 0.0  # context latents noised to a level drawn in [0, this]
    autoencoder: str | None = None  # a checkpoint folder whose trained autoencoder to start from

    def __post_init__(self) -> None:
        for name in ("steps", "ae_steps", "batch", "ae_decoder_every", "render_workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"{name} must be a non-negative integer, got {value!r}")
        if self.batch < 1:
            raise InputError(f"batch must be at least 1, got {self.batch}")
        if self.device != "cpu" and not (
            self.device.split(":")[0] == "cuda" and torch.cuda.is_available()
        ):
            raise InputError(
                f"device must be cpu or cuda (with a GPU present), got {self.device!r}"
            )
        for name in ("lr", "ae_lr"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise InputError(f"{name} must be a positive learning rate, got {value!r}")
        if not math.isfinite(self.motion_weight) or self.motion_weight < 0:
            raise InputError(f"motion_weight must be 0 or more, got {self.motion_weight!r}")
        if self.hidden < 32 or self.hidden % 32:
            raise InputError(f"the hidden size must be a multiple of 32, got {self.hidden}")
        if self.latent_patch_size not in LATENT_PATCH_SIZES:
            raise InputError(f"the latent patch size must be 1 or 2, got {self.latent_patch_size}")
        if not math.isfinite(self.context_noise) or not 0 <= self.context_noise < 1:
            raise InputError(f"the context noise must be in [0, 1), got {self.context_noise!r}")
        if self.autoencoder is not None and not Path(self.autoencoder, AE_WEIGHTS).is_file():
            raise InputError(f"{self.autoencoder} holds no trained autoencoder ({AE_WEIGHTS})")


def use_autoencoder(out: Path, source: str | Path, config: BagelConfig) -> BagelConfig:
    """Put `source`'s autoencoder (its weights, its latent shift and scale) into the new
    run `out` (written by make_tiny with `config`); returns the config with its
    autoencoder's. The run then starts with the decoder phase."""
    ae = BagelConfig.from_checkpoint(source).ae
    if dataclasses.replace(ae, scale_factor=0, shift_factor=0) != dataclasses.replace(
        config.ae, scale_factor=0, shift_factor=0
    ):
        raise InputError(f"the autoencoder in {source} is not the world model's size")
    config = dataclasses.replace(config, ae=ae)
    config.to_files(out)
    shutil.copyfile(Path(source, AE_WEIGHTS), out / AE_WEIGHTS)
    return config

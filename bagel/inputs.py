"""What the pipeline's verbs take: the checks their inputs pass before any context
changes, and the signature of the progress callback they accept."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bagel.config import BagelConfig
from bagel.errors import InputError
from bagel.flow import SamplerParams
from bagel.kv import KVContext
from bagel.tokenizer import BagelTokenizer

ProgressFn = Callable[[int, int], None]  # (steps done, steps total); may raise to cancel


def check_positions(config: BagelConfig, ctx: KVContext, advance: int, what: str) -> None:
    """Refuse `what` when it would take the context past the model's position limit."""
    limit = config.llm.max_position_embeddings
    if ctx.rope + advance > limit:
        raise InputError(
            f"{what} does not fit: the context is at position {ctx.rope} and "
            f"the model's position limit is {limit}"
        )


def check_latent(config: BagelConfig, latent: Tensor, name: str = "latent") -> tuple[int, int, int]:
    """Validate a latent [C, H/8, W/8]; returns its (C, H/8, W/8)."""
    p, c = config.latent_patch_size, config.latent_channels
    if not isinstance(latent, Tensor) or latent.dim() != 3 or latent.shape[0] != c:
        shape = tuple(latent.shape) if isinstance(latent, Tensor) else type(latent).__name__
        raise InputError(f"{name} must be a tensor of shape ({c}, H/8, W/8), got {shape}")
    _, hh, ww = latent.shape
    if hh % p or ww % p or hh == 0 or ww == 0:
        raise InputError(f"{name} spatial size {hh}x{ww} must be a positive multiple of {p}")
    if max(hh, ww) // p > config.max_latent_size:
        raise InputError(
            f"{name} spatial size {hh}x{ww} exceeds the latent position table "
            f"({config.max_latent_size * p} per side)"
        )
    if not torch.isfinite(latent).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return c, hh, ww


def check_image_size(config: BagelConfig, height: int, width: int) -> tuple[int, int]:
    """Validate a requested image size; returns the latent grid (H/16, W/16)."""
    step, top = config.latent_downsample, config.vae_max_side
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(f"{name} must be an integer, got {value!r}")
        if value < step or value > top or value % step:
            raise InputError(
                f"{name} {value} must be a multiple of {step} between {step} and {top}"
            )
    return height // step, width // step


def check_guidance(
    params: SamplerParams, cfg_text_ctx: KVContext | None, cfg_img_ctx: KVContext | None
) -> None:
    """Refuse guidance scales whose guidance context is missing."""
    if params.cfg_text_scale > 1 and cfg_text_ctx is None:
        raise InputError("cfg_text_scale > 1 needs cfg_text_ctx (the text-dropped context)")
    if params.cfg_text_scale > 1 and params.cfg_img_scale > 1 and cfg_img_ctx is None:
        raise InputError("cfg_img_scale > 1 needs cfg_img_ctx (the image-dropped context)")


def check_options(tokenizer: BagelTokenizer, options: list[str]) -> list[list[int]]:
    """Validate the answers of a constrained choice; returns each one's token ids
    followed by the stop token."""
    if isinstance(options, str) or not isinstance(options, list | tuple) or not options:
        raise InputError(f"options must be a non-empty list of strings, got {options!r}")
    for option in options:
        if not isinstance(option, str) or not option.strip():
            raise InputError(f"every option must be a non-empty string, got {option!r}")
    if len(set(options)) != len(options):
        raise InputError(f"options must be distinct, got {list(options)}")
    return [[*tokenizer.encode(o), tokenizer.eos_id] for o in options]

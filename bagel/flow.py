"""Rectified-flow sampling math as pure functions (spec §7.2–§7.6).

t = 1 is noise and t = 0 is data; the model predicts v ≈ noise − data, so an Euler step
is x ← x − v·dt. Guidance combines up to three branch velocities: the main context, the
text-dropped context and the image-dropped context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from bagel.errors import InputError
from bagel.taylorseer import DEFAULT_INTERVAL, FEATURE_CACHES

RENORM_TYPES = ("global", "channel", "text_channel")
MAX_TIMESTEPS = 1000  # the release uses 50; more only costs time


@dataclass(frozen=True)
class SamplerParams:
    """Knobs of one image generation; defaults are the official app's text-to-image ones."""

    num_timesteps: int = 50
    timestep_shift: float = 3.0
    cfg_text_scale: float = 4.0
    cfg_img_scale: float = 1.5
    cfg_interval: tuple[float, float] = (0.4, 1.0)
    cfg_renorm_type: str = "global"
    cfg_renorm_min: float = 0.0
    feature_cache: str = "none"  # "taylorseer": the official TaylorSeer cache (off upstream)
    feature_cache_interval: int = DEFAULT_INTERVAL  # after step 4, one full step every N

    def __post_init__(self) -> None:
        for name in ("timestep_shift", "cfg_text_scale", "cfg_img_scale", "cfg_renorm_min"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InputError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise InputError(f"{name} must be finite, got {value!r}")
        interval = tuple(self.cfg_interval)
        object.__setattr__(self, "cfg_interval", interval)
        interval_ok = (
            len(interval) == 2
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in interval)
            and 0.0 <= interval[0] <= interval[1] <= 1.0
        )
        checks = [
            (
                isinstance(self.num_timesteps, int)
                and not isinstance(self.num_timesteps, bool)
                and 2 <= self.num_timesteps <= MAX_TIMESTEPS,
                f"num_timesteps must be an integer between 2 and {MAX_TIMESTEPS}, "
                f"got {self.num_timesteps!r}",
            ),
            (self.timestep_shift > 0, f"timestep_shift must be > 0, got {self.timestep_shift!r}"),
            (self.cfg_text_scale >= 0, f"cfg_text_scale must be >= 0, got {self.cfg_text_scale!r}"),
            (self.cfg_img_scale >= 0, f"cfg_img_scale must be >= 0, got {self.cfg_img_scale!r}"),
            (
                interval_ok,
                f"cfg_interval must be [lo, hi] with 0 <= lo <= hi <= 1, got {list(interval)}",
            ),
            (
                self.cfg_renorm_type in RENORM_TYPES,
                f"cfg_renorm_type must be one of {RENORM_TYPES}, got {self.cfg_renorm_type!r}",
            ),
            (
                0.0 <= self.cfg_renorm_min <= 1.0,
                f"cfg_renorm_min must be in [0, 1], got {self.cfg_renorm_min!r}",
            ),
            (
                self.feature_cache in FEATURE_CACHES,
                f"feature_cache must be one of {FEATURE_CACHES}, got {self.feature_cache!r}",
            ),
            (
                isinstance(self.feature_cache_interval, int)
                and not isinstance(self.feature_cache_interval, bool)
                and self.feature_cache_interval >= 1,
                "feature_cache_interval must be an integer >= 1, got "
                f"{self.feature_cache_interval!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    @classmethod
    def edit(cls, **overrides) -> SamplerParams:
        """The official app's image-edit defaults."""
        base = dict(cfg_img_scale=2.0, cfg_interval=(0.0, 1.0), cfg_renorm_type="text_channel")
        return cls(**{**base, **overrides})


def flow_timesteps(num_timesteps: int, shift: float) -> Tensor:
    """Shifted schedule t_0 = 1 … t_{n−1} = 0: t = s·u / (1 + (s − 1)·u), u = linspace(1, 0, n)."""
    u = torch.linspace(1, 0, num_timesteps)
    return shift * u / (1 + (shift - 1) * u)


def cfg_scales(t: float, params: SamplerParams) -> tuple[float, float]:
    """The (text, image) scales at shifted time t: the user's inside (lo, hi], else 1."""
    lo, hi = params.cfg_interval
    if lo < t <= hi:
        return params.cfg_text_scale, params.cfg_img_scale
    return 1.0, 1.0


def cfg_combine(
    v: Tensor,
    v_text: Tensor | None,
    v_img: Tensor | None,
    text_scale: float,
    img_scale: float,
    renorm_type: str,
    renorm_min: float,
) -> Tensor:
    """Classifier-free guidance with renormalisation (spec §7.5).

    Args:
        v: main-branch velocity [N, D]; v_text: text-dropped branch; v_img: image-dropped.
        text_scale, img_scale: guidance scales (≤ 1 turns that guidance off).
        renorm_type: "global" (one norm over all values), "channel" (per token) or
            "text_channel" (per token, applied to the text-guided intermediate only).
        renorm_min: lower clamp of the renorm ratio; the upper clamp is 1.
    """
    if text_scale <= 1.0:  # the official rule: no guidance at all, even with img_scale > 1
        return v
    u = v_text + text_scale * (v - v_text)
    if renorm_type == "text_channel":
        u = u * _renorm_ratio(v, u, renorm_min, per_token=True)
        return v_img + img_scale * (u - v_img) if img_scale > 1.0 else u
    w = v_img + img_scale * (u - v_img) if img_scale > 1.0 else u
    if renorm_type not in ("global", "channel"):
        raise InputError(f"cfg_renorm_type must be one of {RENORM_TYPES}, got {renorm_type!r}")
    return w * _renorm_ratio(v, w, renorm_min, per_token=renorm_type == "channel")


def _renorm_ratio(v: Tensor, guided: Tensor, renorm_min: float, per_token: bool) -> Tensor:
    if per_token:
        ratio = v.norm(dim=-1, keepdim=True) / (guided.norm(dim=-1, keepdim=True) + 1e-8)
    else:
        ratio = v.norm() / (guided.norm() + 1e-8)
    return ratio.clamp(min=renorm_min, max=1.0)


def euler_step(x: Tensor, v: Tensor, dt: Tensor) -> Tensor:
    """x_{i+1} = x_i − v·dt. x stays float32; v·dt is taken in v's dtype, as upstream."""
    return x - v * dt

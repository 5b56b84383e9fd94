"""Per-frame metrics of a frame sequence: change from the previous frame, drift from the first.

- `psnr(a, b)`: over all RGB values of two 8-bit images, data range 255, in dB;
  identical images give `math.inf`.
- `ssim(a, b)`: the SSIM of Wang et al. (2004) on the luma Y' = 0.299 R + 0.587 G +
  0.114 B (BT.601, float, not rounded) with an 11×11 Gaussian window (sigma 1.5),
  K1 = 0.01, K2 = 0.03, L = 255, population (co)variances, averaged over the window
  positions that fit inside the image (no padding). Needs images of at least 11×11.
- `siglip_features(pipe, image)`: the model's own SigLIP encoder output, mean-pooled over
  the patches, for the image as the model sees it (the VAE resize rule, then the ViT rule:
  the path of `BagelPipeline.append_vit`). The encoder output is taken before the
  connector and the position table: the table adds the same vectors to every image of a
  given size, which would push every cosine towards 1.
- `drift`: the cosine similarity of each frame's features to the first frame's.

Frames of different sizes: for PSNR and SSIM the earlier frame is resized (bicubic) to
the later one's size before comparing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from bagel.errors import InputError
from bagel.image import open_image, to_tensor
from bagel.pipeline import BagelPipeline

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0
LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class FrameMetrics:
    """Metrics of frame `index` (0-based); the first frame has no previous one (None)."""

    index: int
    psnr_prev: float | None  # dB; math.inf when identical to the previous frame
    ssim_prev: float | None
    drift: float | None  # cosine to the first frame's SigLIP features; None without a model


def psnr(a: Image.Image, b: Image.Image) -> float:
    """PSNR in dB of two RGB images of the same size; `math.inf` when identical."""
    x, y = _pair(a, b, "psnr")
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(DATA_RANGE**2 / mse)


def ssim(a: Image.Image, b: Image.Image) -> float:
    """Mean SSIM of the luma of two RGB images of the same size (see the module doc)."""
    x, y = _pair(a, b, "ssim")
    if min(x.shape[:2]) < SSIM_WINDOW:
        raise InputError(
            f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, "
            f"got {x.shape[1]}x{x.shape[0]}"
        )
    x, y = x @ LUMA, y @ LUMA  # [H, W] luma
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    mu_x, mu_y = _gaussian_filter(x), _gaussian_filter(y)
    var_x = _gaussian_filter(x * x) - mu_x**2
    var_y = _gaussian_filter(y * y) - mu_y**2
    cov = _gaussian_filter(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return float(ssim_map.mean())


def siglip_features(pipe: BagelPipeline, image: Image.Image) -> torch.Tensor:
    """[C_vit] float32 on the CPU: the mean of the SigLIP features of the image's patches."""
    prepared = pipe.vit_rule.resize(pipe.prepare_image(image))
    with torch.inference_mode():
        features = pipe.net.vit_features(to_tensor(prepared))  # [N, C_vit]
    return features.float().mean(dim=0).cpu()


def drift(pipe: BagelPipeline, frames: Sequence[Image.Image]) -> list[float]:
    """Cosine similarity of every frame's SigLIP features to the first frame's (first: 1)."""
    if not frames:
        raise InputError("drift needs at least one frame")
    features = torch.stack([siglip_features(pipe, frame) for frame in frames])
    return torch.cosine_similarity(features, features[:1], dim=-1).tolist()


def frame_metrics(pipe: BagelPipeline | None, frames: Sequence[Image.Image]) -> list[FrameMetrics]:
    """PSNR and SSIM against the previous frame and drift from the first, for every frame.

    Without a model (`pipe` None) the drift is None.
    """
    if not frames:
        raise InputError("frame_metrics needs at least one frame")
    drifts = drift(pipe, frames) if pipe is not None else [None] * len(frames)
    out = [FrameMetrics(0, None, None, drifts[0])]
    for i in range(1, len(frames)):
        out.append(
            FrameMetrics(i, psnr(frames[i - 1], frames[i]), _ssim_prev(frames, i), drifts[i])
        )
    return out


def _ssim_prev(frames: Sequence[Image.Image], i: int) -> float | None:
    """SSIM to the previous frame, or None when a frame is too small for the window."""
    if min(frames[i].size) < SSIM_WINDOW:
        return None
    return ssim(frames[i - 1], frames[i])


def _pair(a: Image.Image, b: Image.Image, what: str) -> tuple[NDArray, NDArray]:
    """Both images as float64 [H, W, 3] at b's size (a resized, bicubic, if it differs)."""
    a, b = open_image(a, f"{what}: first image"), open_image(b, f"{what}: second image")
    if a.size != b.size:
        a = a.resize(b.size, Image.Resampling.BICUBIC)
    return np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)


def _gaussian_filter(x: NDArray) -> NDArray:
    """Separable 11-tap Gaussian, 'valid' positions only: [H, W] → [H-10, W-10]."""
    r = SSIM_WINDOW // 2
    g = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * SSIM_SIGMA**2))
    g /= g.sum()
    windows = np.lib.stride_tricks.sliding_window_view
    x = windows(x, SSIM_WINDOW, axis=1) @ g  # [H, W-10]
    return windows(x, SSIM_WINDOW, axis=0) @ g  # [H-10, W-10]

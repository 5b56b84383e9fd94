"""Frame metrics: PSNR and SSIM against known values and an independent SSIM, SigLIP drift."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from bagel.embeddings import grid_position_ids, patchify_image
from bagel.errors import InputError
from bagel.image import to_tensor
from workbench.metrics import (
    LUMA,
    FrameMetrics,
    drift,
    frame_metrics,
    psnr,
    siglip_features,
    ssim,
)


def noise_image(seed: int, size: tuple[int, int] = (48, 40), low: int = 0, high: int = 256):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(low, high, (size[1], size[0], 3), dtype=np.uint8))


def smooth_image(size: tuple[int, int] = (48, 40)) -> Image.Image:
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    pixels = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1) % 256
    return Image.fromarray(pixels.astype(np.uint8))


def add_noise(image: Image.Image, sigma: float, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image, dtype=np.float64) + rng.normal(
        0, sigma, (image.height, image.width, 3)
    )
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


# -- PSNR -------------------------------------------------------------------------------


def test_psnr_known_value_inf_and_symmetry():
    a = noise_image(0, high=200)
    b = Image.fromarray(np.asarray(a) + np.uint8(10))  # every value +10, no clipping
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)
    assert psnr(a, b) == psnr(b, a)
    assert psnr(a, a.copy()) == math.inf


def test_psnr_resizes_the_earlier_frame_to_the_later_size():
    small, big = noise_image(0, (24, 20)), noise_image(1, (48, 40))
    expected = psnr(small.resize(big.size, Image.Resampling.BICUBIC), big)
    assert psnr(small, big) == expected


# -- SSIM -------------------------------------------------------------------------------


def reference_ssim(a: Image.Image, b: Image.Image) -> float:
    """A second implementation: full 2-D 11x11 Gaussian kernel with torch conv2d."""
    x, y = (torch.from_numpy(np.asarray(i, dtype=np.float64) @ LUMA)[None, None] for i in (a, b))
    g = torch.exp(-(torch.arange(-5, 6, dtype=torch.float64) ** 2) / (2 * 1.5**2))
    kernel = torch.outer(g, g)
    kernel = (kernel / kernel.sum())[None, None]

    def f(z):
        return torch.nn.functional.conv2d(z, kernel)

    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def test_ssim_of_an_image_with_itself_is_one_and_it_is_symmetric():
    a, b = noise_image(0), add_noise(noise_image(0), 20)
    assert ssim(a, a.copy()) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-12)


def test_ssim_decreases_with_noise():
    clean = smooth_image()
    values = [ssim(clean, add_noise(clean, sigma)) for sigma in (2, 8, 20, 50)]
    assert all(later < earlier for earlier, later in zip(values, values[1:], strict=False))
    assert values[0] > 0.9 and values[-1] < 0.5


def test_ssim_of_constant_images_has_the_closed_form():
    # no variance: SSIM = (2ab + C1) / (a^2 + b^2 + C1) with the luma values a, b
    a = Image.new("RGB", (20, 16), (100, 100, 100))
    b = Image.new("RGB", (20, 16), (140, 140, 140))
    c1 = (0.01 * 255) ** 2
    la, lb = 100 * LUMA.sum(), 140 * LUMA.sum()
    assert ssim(a, b) == pytest.approx((2 * la * lb + c1) / (la**2 + lb**2 + c1), rel=1e-12)


def test_ssim_matches_an_independent_implementation():
    a = smooth_image((53, 37))
    for b in (add_noise(a, 15), noise_image(3, (53, 37))):
        assert ssim(a, b) == pytest.approx(reference_ssim(a, b), abs=1e-10)


def test_ssim_refuses_images_smaller_than_the_window():
    with pytest.raises(InputError, match="at least 11x11"):
        ssim(noise_image(0, (10, 30)), noise_image(1, (10, 30)))


# -- SigLIP drift -----------------------------------------------------------------------


def test_siglip_features_are_the_mean_of_the_vit_encoder_output(pipe):
    image = noise_image(0, (40, 24))
    features = siglip_features(pipe, image)
    assert features.shape == (pipe.config.vit.hidden_size,) and features.dtype == torch.float32
    # by hand: the append_vit path (VAE rule, then ViT rule), encoder only, no connector
    prepared = pipe.vit_rule.resize(pipe.prepare_image(image))
    p, side = pipe.config.vit.patch_size, pipe.config.vit.max_patches_per_side
    h, w = prepared.height // p, prepared.width // p
    with torch.inference_mode():
        encoded = pipe.net.vit_model(
            patchify_image(to_tensor(prepared), p), grid_position_ids(h, w, side, "cpu")
        )
    assert encoded.shape[0] == h * w
    assert torch.allclose(features, encoded.mean(0), atol=1e-6)
    assert not torch.allclose(features, siglip_features(pipe, noise_image(1, (40, 24))))


def test_drift_is_one_for_the_first_frame_and_below_one_after(pipe):
    frames = [noise_image(0, (32, 32)), noise_image(0, (32, 32)), noise_image(5, (32, 32))]
    values = drift(pipe, frames)
    assert values[0] == pytest.approx(1.0, abs=1e-6)
    assert values[1] == pytest.approx(1.0, abs=1e-6)
    assert -1.0 <= values[2] < 0.9999


def test_frame_metrics(pipe):
    frames = [noise_image(0, (32, 32)), add_noise(noise_image(0, (32, 32)), 10), noise_image(2)]
    out = frame_metrics(pipe, frames)
    assert [m.index for m in out] == [0, 1, 2]
    assert out[0] == FrameMetrics(0, None, None, pytest.approx(1.0, abs=1e-6))
    assert out[1].psnr_prev == psnr(frames[0], frames[1])
    assert out[1].ssim_prev == ssim(frames[0], frames[1])
    assert out[2].psnr_prev == psnr(frames[1], frames[2])  # 32x32 resized to 48x40
    assert [m.drift for m in out] == pytest.approx(drift(pipe, frames))
    assert [m.drift for m in frame_metrics(None, frames)] == [None, None, None]
    with pytest.raises(InputError, match="at least one frame"):
        frame_metrics(pipe, [])

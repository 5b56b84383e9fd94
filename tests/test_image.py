"""Tests for bagel.image: resize rule (spec §4.1), RGB conversion, reading, tensors."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bagel.image as bimage
from bagel.errors import ImageError, InputError
from bagel.image import ResizeRule, open_image, to_pil, to_rgb, to_tensor

VAE = ResizeRule(1024, 512, 16)
VIT = ResizeRule(980, 224, 14)


# -- ResizeRule -----------------------------------------------------------------------


def test_default_max_pixels() -> None:
    assert VAE.max_pixels == 1_806_336


@pytest.mark.parametrize(
    ("rule", "size", "expected"),
    [
        (VAE, (1024, 1024), (1024, 1024)),
        (VAE, (800, 600), (800, 608)),  # 600/16 = 37.5 -> 38 (even)
        (VIT, (1024, 1024), (980, 980)),
        (VIT, (800, 608), (798, 602)),  # spec 4.1 example: 57 x 43 patches
        (VAE, (2048, 1536), (1024, 768)),  # plain shrink
    ],
)
def test_size_for_spec_examples(
    rule: ResizeRule, size: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert rule.size_for(*size) == expected


def test_size_for_rounds_half_to_even() -> None:
    # 584/16 = 36.5 exactly: half-to-even gives 36 (576); floor(x + 0.5) would give 592.
    assert VAE.size_for(800, 584) == (800, 576)
    # 600/16 = 37.5 rounds up to the even 38.
    assert VAE.size_for(600, 800) == (608, 800)


def test_size_for_upscales_small_image_to_min_side() -> None:
    # s = max(min(1024/100, 1), 512/50) = 10.24 -> 1024 x 512
    assert VAE.size_for(100, 50) == (1024, 512)


def test_size_for_long_side_cap_after_upscale() -> None:
    # s = 512/100 = 5.12 -> 5120 x 512, then s3 = 1024/5120 = 0.2 -> 1024 x round(102.4)=102
    # -> 102/16 = 6.375 -> 96.
    assert VAE.size_for(1000, 100) == (1024, 96)


def test_size_for_max_pixels_uses_area_ratio_linearly() -> None:
    rule = ResizeRule(max_side=1000, min_side=10, stride=10, max_pixels=5000)
    # First fit: 100 x 100 = 10000 > 5000, s2 = 5000/10000 = 0.5 applied to each side
    # -> 50 x 50 (area 2500; a true area rescale would give 70 x 70).
    assert rule.size_for(100, 100) == (50, 50)
    # 300 x 200 -> 60000 > 5000, s2 = 1/12 -> round(25) = 25 -> 20 (2.5 -> 2),
    # round(16.67) = 17 -> 20 (1.7 -> 2).
    assert rule.size_for(300, 200) == (20, 20)


def test_size_for_refuses_extreme_aspect_ratio() -> None:
    assert VAE.size_for(6400, 100) == (1024, 16)  # ratio 64 = 1024/16 is still accepted
    with pytest.raises(ImageError, match=r"aspect ratio 65\.0:1, above the limit 64:1"):
        VAE.size_for(6500, 100)
    with pytest.raises(ImageError, match=r"aspect ratio 100\.0:1, above the limit 70:1"):
        VIT.size_for(10, 1000)


def test_size_for_zero_size() -> None:
    with pytest.raises(ImageError, match="zero size"):
        VAE.size_for(0, 10)


def test_rule_validates_fields() -> None:
    with pytest.raises(InputError, match="stride"):
        ResizeRule(1024, 512, 0)


def test_resize_applies_bicubic_and_keeps_same_size() -> None:
    image = Image.new("RGB", (800, 600), (10, 20, 30))
    out = VAE.resize(image)
    assert out.size == (800, 608)
    assert out.getpixel((400, 300)) == (10, 20, 30)
    same = Image.new("RGB", (1024, 1024))
    assert VAE.resize(same) is same


def test_rules_from_config() -> None:
    class _Vit:
        patch_size = 14

    class _Cfg:
        vae_max_side, vae_min_side, latent_downsample = 1024, 512, 16
        vit_max_side, vit_min_side, vit = 980, 224, _Vit()

    assert bimage.vae_rule(_Cfg()) == VAE  # type: ignore[arg-type]
    assert bimage.vit_rule(_Cfg()) == VIT  # type: ignore[arg-type]


# -- to_rgb ---------------------------------------------------------------------------


def test_rgba_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (3, 1), (255, 0, 0, 0))
    image.putpixel((1, 0), (255, 0, 0, 255))
    image.putpixel((2, 0), (0, 0, 0, 128))
    out = to_rgb(image)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (255, 0, 0)
    assert out.getpixel((2, 0)) == (127, 127, 127)


def test_palette_transparency_becomes_white() -> None:
    image = Image.new("P", (2, 1), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    out = to_rgb(image)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 255, 0)


def test_la_is_composited_like_rgba() -> None:
    """Grey + alpha looks as the same picture saved as RGBA (the reference dropped LA's
    alpha and showed its hidden pixels)."""
    for grey, alpha in ((10, 0), (10, 255), (200, 128)):
        la = Image.new("LA", (1, 1), (grey, alpha))
        rgba = Image.new("RGBA", (1, 1), (grey, grey, grey, alpha))
        assert to_rgb(la).getpixel((0, 0)) == to_rgb(rgba).getpixel((0, 0))
    assert to_rgb(Image.new("LA", (1, 1), (10, 0))).getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_matches_convert() -> None:
    image = Image.new("CMYK", (1, 1), (0, 255, 0, 0))
    assert to_rgb(image).getpixel((0, 0)) == image.convert("RGB").getpixel((0, 0))
    assert to_rgb(image).mode == "RGB"


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I"])
def test_high_depth_gray_is_scaled_not_clipped(mode: str) -> None:
    image = Image.new(mode, (3, 1))
    image.putpixel((0, 0), 65535)
    image.putpixel((1, 0), 257 * 100)
    out = to_rgb(image)
    assert [out.getpixel((i, 0)) for i in range(3)] == [(255,) * 3, (100,) * 3, (0,) * 3]


def test_float_mode_is_clipped_and_rounded() -> None:
    image = Image.fromarray(np.array([[-5.0, 100.6, 300.0, np.nan]], dtype=np.float32))
    assert image.mode == "F"
    out = to_rgb(image)
    assert [out.getpixel((i, 0))[0] for i in range(4)] == [0, 101, 255, 0]


def test_16bit_png_round_trip_through_file(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 65535, 32896]], dtype=np.uint16)).save(path)
    out = open_image(path)
    assert [out.getpixel((i, 0))[0] for i in range(3)] == [0, 255, 128]


# -- open_image -----------------------------------------------------------------------


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_open_path_bytes_and_pil(tmp_path: Path) -> None:
    source = Image.new("RGBA", (4, 3), (0, 0, 255, 0))
    path = tmp_path / "a.png"
    source.save(path)
    for item in (path, str(path), path.read_bytes(), source):
        out = open_image(item)
        assert out.mode == "RGB" and out.size == (4, 3)
        assert out.getpixel((0, 0)) == (255, 255, 255)


def test_open_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(ImageError, match=r"nope\.png: file not found"):
        open_image(path)


def test_open_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"not a regular file \(a folder\)"):
        open_image(tmp_path)


def test_open_random_bytes_uses_name() -> None:
    data = np.random.default_rng(0).bytes(200)
    with pytest.raises(ImageError, match=r"^<bytes>: not an image \(unidentified format\)"):
        open_image(data)
    with pytest.raises(ImageError, match=r"^upload\.jpg: not an image"):
        open_image(data, name="upload.jpg")


def test_open_truncated_png(tmp_path: Path) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _png_bytes(Image.fromarray(noise))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.png: truncated or corrupt image data"):
        open_image(path)


def test_open_empty_file_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png: empty file \(0 bytes\)"):
        open_image(path)
    with pytest.raises(ImageError, match=r"^<bytes>: empty data"):
        open_image(b"")


def test_open_zero_size_pil_image() -> None:
    with pytest.raises(ImageError, match=r"^<image>: image has zero size \(0x5\)"):
        open_image(Image.new("RGB", (0, 5)))


def test_open_too_many_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _png_bytes(Image.new("RGB", (100, 100)))
    monkeypatch.setattr(bimage, "MAX_INPUT_PIXELS", 5000)
    with pytest.raises(ImageError, match=r"too many pixels \(100x100 = 10000\); the limit is 5000"):
        open_image(data)


@pytest.mark.parametrize("side", [9000, 10000, 20000])
def test_open_huge_header_refused_before_decoding(side: int) -> None:
    # 9000² is above our limit only; 10000² also triggers Pillow's warning and 20000²
    # Pillow's own DecompressionBombError. All must end as ImageError without decoding.
    with pytest.raises(ImageError, match=r"^<bytes>: too many pixels"):
        open_image(_png_header_only(side, side))


def test_open_animated_takes_first_frame() -> None:
    frames = [Image.new("RGB", (4, 4), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    out = open_image(buffer.getvalue())
    assert out.getpixel((0, 0)) == (255, 0, 0)
    animated = Image.open(io.BytesIO(buffer.getvalue()))
    animated.seek(1)
    assert open_image(animated).getpixel((0, 0)) == (255, 0, 0)


def test_open_rejects_other_types() -> None:
    with pytest.raises(ImageError, match="expected a path, bytes or a PIL image"):
        open_image(123)  # type: ignore[arg-type]


# -- tensors --------------------------------------------------------------------------


def test_to_tensor_values_and_shape() -> None:
    image = Image.new("RGB", (3, 2), (0, 255, 51))
    x = to_tensor(image)
    assert x.dtype == torch.float32 and x.shape == (3, 2, 3)
    assert x[0].eq(-1).all() and x[1].eq(1).all()
    assert torch.allclose(x[2], torch.tensor(51 / 255 * 2 - 1))


def test_to_tensor_requires_rgb() -> None:
    with pytest.raises(ImageError, match="RGB"):
        to_tensor(Image.new("L", (2, 2)))


def test_round_trip_is_documented_truncation() -> None:
    values = np.arange(256, dtype=np.uint8)
    image = Image.fromarray(np.stack([values, values[::-1], values], axis=-1)[None])
    back = np.asarray(to_pil(to_tensor(image)))[0, :, 0].astype(int)
    # In float32, ((v/255 - 0.5)/0.5)*0.5 + 0.5 lands just below v/255 for v = 1..63, so
    # the reference's truncating cast returns v - 1 there; every other value is exact.
    expected = np.where((values >= 1) & (values <= 63), values.astype(int) - 1, values)
    np.testing.assert_array_equal(back, expected)


def test_to_pil_truncates_and_clamps() -> None:
    x = torch.empty(1, 3, 1, 4)
    x[..., 0], x[..., 1], x[..., 2], x[..., 3] = 0.99, 0.999, 2.0, -2.0
    out = to_pil(x)
    assert out.mode == "RGB" and out.size == (4, 1)
    # 0.995 * 255 = 253.7 -> 253; 0.9995 * 255 = 254.9 -> 254 (no rounding up).
    assert [out.getpixel((i, 0))[0] for i in range(4)] == [253, 254, 255, 0]


def test_to_pil_accepts_bf16_and_rejects_bad_shape() -> None:
    assert to_pil(torch.zeros(3, 2, 2, dtype=torch.bfloat16)).getpixel((0, 0)) == (127,) * 3
    with pytest.raises(InputError, match=r"\[3, H, W\]"):
        to_pil(torch.zeros(4, 2, 2))

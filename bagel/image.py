"""Image input and output: reading, RGB conversion, resize rules and tensor conversion.

Implements spec §4.1 (RGB conversion, the max-long-edge / min-short-edge resize rule,
[-1, 1] normalisation), §5.1 (the same rule with the VAE sizes) and §7.7 step 3
(tensor to uint8 pixels by truncation). Pure PIL / numpy / torch, no model code.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from bagel.errors import ImageError, InputError

if TYPE_CHECKING:
    from bagel.config import BagelConfig

# Decompression-bomb guard: an input whose header claims more pixels than this is refused
# before any pixel data is decoded (64 Mi pixels ≈ 8192 × 8192, 192 MiB as RGB). Every
# accepted image is shrunk to at most 1024 px per side anyway, so nothing useful is lost.
MAX_INPUT_PIXELS = 64 * 1024 * 1024

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})
EXIF_ORIENTATION = 0x0112

# Single-channel modes with more than 8 bits per sample (see `to_rgb`).
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


# -- resize rule ----------------------------------------------------------------------


@dataclass(frozen=True)
class ResizeRule:
    """The reference's MaxLongEdgeMinShortEdgeResize (spec §4.1 step 2).

    Shrinks so the long side is at most `max_side`, enlarges so the short side is at
    least `min_side`, and snaps both sides to multiples of `stride`.
    """

    max_side: int
    min_side: int
    stride: int
    max_pixels: int = 14 * 14 * 9 * 1024

    def __post_init__(self) -> None:
        for field_name in ("max_side", "min_side", "stride", "max_pixels"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value <= 0:
                raise InputError(f"ResizeRule.{field_name} must be a positive int, got {value!r}")
        if self.max_side < self.stride:
            raise InputError(
                f"ResizeRule.max_side ({self.max_side}) is smaller than stride ({self.stride})"
            )

    @property
    def max_aspect_ratio(self) -> float:
        """Largest long/short side ratio accepted (beyond it the short side is one stride)."""
        return self.max_side / self.stride

    def _snap(self, value: int) -> int:
        return max(self.stride, round(value / self.stride) * self.stride)

    def _fit(self, width: int, height: int, scale: float) -> tuple[int, int]:
        return self._snap(round(width * scale)), self._snap(round(height * scale))

    def check(self, width: int, height: int) -> None:
        """Raise ImageError for a zero-size image or one too elongated for this rule."""
        if width <= 0 or height <= 0:
            raise ImageError(f"image has zero size ({width}x{height})")
        long_side, short_side = max(width, height), min(width, height)
        if long_side * self.stride > self.max_side * short_side:
            raise ImageError(
                f"image {width}x{height} has aspect ratio {long_side / short_side:.1f}:1, "
                f"above the limit {self.max_aspect_ratio:g}:1 "
                f"(max side {self.max_side} / stride {self.stride}); "
                "its short side would collapse to a single stride"
            )

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        """Target (width, height) for an input of `width` x `height`, exactly as the reference.

        Python's `round` (half to even) is used throughout. When the size exceeds
        `max_pixels`, the area ratio is applied as a linear factor, as in the reference.
        """
        self.check(width, height)
        scale = min(self.max_side / max(width, height), 1.0)
        scale = max(scale, self.min_side / min(width, height))
        new_w, new_h = self._fit(width, height, scale)
        if new_w * new_h > self.max_pixels:
            new_w, new_h = self._fit(new_w, new_h, self.max_pixels / (new_w * new_h))
        if max(new_w, new_h) > self.max_side:
            new_w, new_h = self._fit(new_w, new_h, self.max_side / max(new_w, new_h))
        return new_w, new_h

    def resize(self, image: Image.Image) -> Image.Image:
        """Resize to `size_for(*image.size)` with PIL bicubic; the same image if unchanged."""
        size = self.size_for(*image.size)
        if size == image.size:
            return image
        return image.resize(size, Image.Resampling.BICUBIC)


def vae_rule(config: BagelConfig) -> ResizeRule:
    """Resize rule of the VAE transform (release: max 1024, min 512, stride 16)."""
    return ResizeRule(config.vae_max_side, config.vae_min_side, config.latent_downsample)


def vit_rule(config: BagelConfig) -> ResizeRule:
    """Resize rule of the ViT transform (release: max 980, min 224, stride 14)."""
    return ResizeRule(config.vit_max_side, config.vit_min_side, config.vit.patch_size)


# -- RGB conversion -------------------------------------------------------------------


def _over_white(image: Image.Image, mask: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", image.size, (255, 255, 255))
    canvas.paste(image, mask=mask)
    return canvas


def _high_depth_to_l(image: Image.Image) -> tuple[Image.Image, np.ndarray]:
    """Scale a 16/32-bit single-channel image to 8 bits; also return the raw samples."""
    samples = np.asarray(image)
    values = np.nan_to_num(samples.astype(np.float64), nan=0.0)
    if image.mode == "F":
        scaled = np.clip(values, 0.0, 255.0)
    else:
        scaled = np.clip(values, 0.0, 65535.0) / 257.0
    return Image.fromarray(np.rint(scaled).astype(np.uint8)), samples


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert to RGB with the reference rule: transparency is composited over white.

    Images with an alpha channel (RGBA, LA, PA) and images carrying a 'transparency'
    entry go through RGBA and are pasted on a white canvas with alpha as the mask;
    everything else is `convert("RGB")`.

    Deliberate deviation from the reference: it composites only RGBA and 'transparency'
    images, so an LA (grey + alpha) image lost its alpha and showed its hidden pixels;
    here it looks as the same picture saved as RGBA does.

    Deliberate deviation from the reference: single-channel modes with more than
    8 bits per sample would be clipped by `convert("RGB")` (every value above 255
    turns white). They are scaled to 8 bits first:
      - "I;16", "I;16L", "I;16B", "I;16N" and "I": value / 257, rounded, after clipping
        to [0, 65535] (0 -> 0, 65535 -> 255). "I" is treated as 16-bit data because
        Pillow decodes 16-bit PGM/PPM (and some TIFF) files into it;
      - "F": clipped to [0, 255] and rounded (Pillow's own scale for float pixels);
        NaN becomes 0.
    A grayscale 'transparency' value on such images still turns those pixels white.
    """
    if image.mode in _HIGH_DEPTH_MODES:
        gray, samples = _high_depth_to_l(image)
        transparent = image.info.get("transparency")
        if isinstance(transparent, (int, float)):
            mask = Image.fromarray(np.where(samples == transparent, 0, 255).astype(np.uint8))
            return _over_white(gray.convert("RGB"), mask)
        return gray.convert("RGB")
    if image.mode in _ALPHA_MODES or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return _over_white(rgba, rgba.getchannel("A"))
    return image.convert("RGB")


# -- reading --------------------------------------------------------------------------


def _check_pixels(image: Image.Image, name: str) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: image has zero size ({width}x{height})")
    if width * height > MAX_INPUT_PIXELS:
        raise ImageError(
            f"{name}: too many pixels ({width}x{height} = {width * height}); "
            f"the limit is {MAX_INPUT_PIXELS}"
        )


def _open_lazy(source: str | Path | bytes, name: str) -> Image.Image:
    """Image.open on a path or bytes (header only), with every failure as ImageError."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError(f"{name}: empty data (0 bytes)")
        fp: io.BytesIO | Path = io.BytesIO(bytes(source))
    else:
        fp = Path(source)
        if not fp.exists():
            raise ImageError(f"{name}: file not found")
        if not fp.is_file():  # a folder, FIFO or device: opening could block or never end
            kind = "a folder" if fp.is_dir() else "a FIFO, device or socket"
            raise ImageError(f"{name}: not a regular file ({kind})")
        if fp.stat().st_size == 0:
            raise ImageError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own, lower limit is checked right after; Pillow's warning adds nothing.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"{name}: too many pixels ({exc}); the limit is {MAX_INPUT_PIXELS}"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image (unidentified format)") from exc
    except FileNotFoundError as exc:
        raise ImageError(f"{name}: file not found") from exc
    except OSError as exc:
        raise ImageError(f"{name}: cannot read file ({exc})") from exc
    except Exception as exc:  # a malformed header can raise almost anything in a plugin
        raise ImageError(f"{name}: corrupt image header ({type(exc).__name__}: {exc})") from exc


def _decode_rgb(image: Image.Image, name: str) -> Image.Image:
    """Check the size, fully decode the first frame and convert it to RGB."""
    _check_pixels(image, name)
    try:
        if getattr(image, "n_frames", 1) > 1 and image.tell() != 0:
            image.seek(0)
        image.load()
    except Exception as exc:
        raise ImageError(
            f"{name}: truncated or corrupt image data ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        return to_rgb(_upright(image))
    except (ValueError, OSError) as exc:
        raise ImageError(f"{name}: cannot convert mode {image.mode!r} to RGB ({exc})") from exc


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (a phone's portrait photo is stored
    sideways with orientation 6); unchanged without one.

    Deliberate deviation from the reference, which ignores the tag and uses such photos
    sideways."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # an unreadable EXIF block: the pixels as stored
        return image
    if orientation in (None, 1):
        return image
    return ImageOps.exif_transpose(image)


def open_image(source: str | Path | bytes | Image.Image, name: str | None = None) -> Image.Image:
    """Read an image (path, encoded bytes or PIL image) into a fully decoded RGB image.

    The header's size is checked against MAX_INPUT_PIXELS before any decoding, a
    truncated file is an error (Pillow's LOAD_TRUNCATED_IMAGES is left alone), an
    animated image gives its first frame, the EXIF orientation is applied and then
    `to_rgb`. The shape is not judged here: whether an image's aspect ratio fits is the
    model's resize rules' call (`ResizeRule.check`, via `BagelPipeline.prepare_image`,
    which every entry point that hands an image to a session goes through first). Every failure raises
    ImageError whose message starts with `name` (default: the path, "<bytes>" or
    "<image>").
    """
    if isinstance(source, Image.Image):
        return _decode_rgb(source, name or "<image>")
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
    elif isinstance(source, (str, Path)):
        label = name or str(source)
    else:
        raise ImageError(
            f"{name or '<input>'}: expected a path, bytes or a PIL image, "
            f"got {type(source).__name__}"
        )
    with _open_lazy(source, label) as image:
        return _decode_rgb(image, label)


# -- tensors --------------------------------------------------------------------------


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 [3, H, W] in [-1, 1] (ToTensor, then Normalize(0.5, 0.5))."""
    if image.mode != "RGB":
        raise ImageError(f"to_tensor needs an RGB image, got mode {image.mode!r}; use to_rgb")
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    return pixels.to(torch.float32).div(255).sub(0.5).div(0.5)


def to_pil(x: torch.Tensor) -> Image.Image:
    """[3, H, W] or [1, 3, H, W] tensor in about [-1, 1] -> RGB PIL image (spec §7.7).

    pixel = clamp(x * 0.5 + 0.5, 0, 1) * 255, cast to uint8 by truncation (not rounding),
    computed in float32 on the CPU.
    """
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        raise InputError(f"to_pil expects a [3, H, W] or [1, 3, H, W] tensor, got {list(x.shape)}")
    x = x.detach().to(device="cpu", dtype=torch.float32)
    pixels = ((x * 0.5 + 0.5).clamp(0, 1) * 255).to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())

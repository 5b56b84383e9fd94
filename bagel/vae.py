"""The FLUX.1 autoencoder (spec §1.8): pixels in [-1, 1] <-> scaled 16-channel latents.

Module and parameter names follow the official `ae.safetensors` so its state dict loads
without renaming. Everything runs in the dtype of the weights; no CUDA-only kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bagel.config import AEConfig
from bagel.errors import InputError

GROUPS = 32
NORM_EPS = 1e-6


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the FLUX settings (32 groups, eps 1e-6, affine)."""
    return nn.GroupNorm(num_groups=GROUPS, num_channels=channels, eps=NORM_EPS, affine=True)


def swish(x: Tensor) -> Tensor:
    """x * sigmoid(x)."""
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """Two norm-swish-conv3x3 stages plus a residual; 1x1 `nin_shortcut` when widths differ."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, with a residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        # [B, C, H, W] -> [B, 1, H*W, C]: one head, positions as the sequence
        q, k, v = (proj(n).reshape(b, 1, c, h * w).transpose(-1, -2) for proj in self._qkv())
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(c))
        # [B, 1, H*W, C] -> [B, C, H, W]
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)

    def _qkv(self) -> tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d]:
        return self.q, self.k, self.v


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then a stride-2 3x3 conv with no padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0)  # (left, right, top, bottom)
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv with padding 1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    """ResnetBlock -> AttnBlock -> ResnetBlock at constant width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution level: a `block` list, optionally followed by a resampler.

    The resampler is registered as `downsample` or `upsample` to match the checkpoint.
    """

    def __init__(self, widths: list[int], resample: str | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(widths[i], widths[i + 1]) for i in range(len(widths) - 1)
        )
        self.resample_name = resample
        if resample == "downsample":
            self.downsample = Downsample(widths[-1])
        elif resample == "upsample":
            self.upsample = Upsample(widths[-1])

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        if self.resample_name is not None:
            x = getattr(self, self.resample_name)(x)
        return x


class Encoder(nn.Module):
    """Pixels [B, in, H, W] -> moments [B, 2*z, H/ds, W/ds]."""

    def __init__(self, config: AEConfig) -> None:
        super().__init__()
        widths = [config.ch * m for m in config.ch_mult]
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(config.in_channels, config.ch, kernel_size=3, padding=1)
        self.down = nn.ModuleList()
        width_in = config.ch
        for level, width in enumerate(widths):
            chain = [width_in] + [width] * config.num_res_blocks
            self.down.append(_Level(chain, "downsample" if level != last else None))
            width_in = width
        self.mid = MidBlock(widths[-1])
        self.norm_out = _norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * config.z_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Unscaled latents [B, z, h, w] -> pixels [B, out, h*ds, w*ds].

    `up[l]` is indexed by resolution level (up[0] is the highest resolution); the levels
    run from the last index down to 0.
    """

    def __init__(self, config: AEConfig) -> None:
        super().__init__()
        widths = [config.ch * m for m in config.ch_mult]
        self.conv_in = nn.Conv2d(config.z_channels, widths[-1], kernel_size=3, padding=1)
        self.mid = MidBlock(widths[-1])
        levels: list[_Level] = []
        width_in = widths[-1]
        for level in reversed(range(len(widths))):
            chain = [width_in] + [widths[level]] * (config.num_res_blocks + 1)
            levels.append(_Level(chain, "upsample" if level != 0 else None))
            width_in = widths[level]
        self.up = nn.ModuleList(reversed(levels))  # store by resolution level
        self.norm_out = _norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], config.out_ch, kernel_size=3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))


class AutoEncoder(nn.Module):
    """The FLUX autoencoder with BAGEL's latent scaling and shift."""

    def __init__(self, config: AEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder.conv_in.weight.device

    def encode_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Pixels [B, in, H, W] in [-1, 1] -> raw (mean, logvar), each [B, z, H/ds, W/ds]."""
        self._check_pixels(x)
        moments = self.encoder(x.to(device=self.device, dtype=self.dtype))
        # [B, 2*z, h, w] -> 2 x [B, z, h, w]
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return mean, logvar

    def encode(
        self, x: Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> Tensor:
        """Pixels -> scaled latents `scale * (z - shift)`; z is sampled from the posterior
        (as the reference does) unless `sample` is False, in which case z is the mean.

        The noise is drawn in float32 on the generator's device (CPU if none), so a seeded
        CPU generator gives the same latents whatever device the model is on.
        """
        mean, logvar = self.encode_moments(x)
        z = mean
        if sample:
            noise_device = generator.device if generator is not None else torch.device("cpu")
            eps = torch.randn(
                mean.shape, generator=generator, dtype=torch.float32, device=noise_device
            )
            z = mean + torch.exp(0.5 * logvar) * eps.to(device=mean.device, dtype=mean.dtype)
        return self.config.scale_factor * (z - self.config.shift_factor)

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents [B, z, h, w] -> pixels [B, out, h*ds, w*ds] (roughly in [-1, 1])."""
        self._check_latents(z)
        z = z.to(device=self.device, dtype=self.dtype)
        return self.decoder(z / self.config.scale_factor + self.config.shift_factor)

    def _check_pixels(self, x: Tensor) -> None:
        """Raise InputError unless x is [B, in_channels, H, W] with H, W multiples of ds."""
        ds, cin = self.config.downsample, self.config.in_channels
        shape = tuple(x.shape)
        if x.dim() != 4 or shape[1] != cin:
            raise InputError(f"AE encode: expected pixels of shape [B, {cin}, H, W], got {shape}")
        if shape[2] % ds or shape[3] % ds or shape[2] == 0 or shape[3] == 0:
            raise InputError(
                f"AE encode: image shape {shape} has H×W {shape[2]}×{shape[3]}, "
                f"which must be positive multiples of {ds}"
            )

    def _check_latents(self, z: Tensor) -> None:
        """Raise InputError unless z is [B, z_channels, h, w]."""
        zc = self.config.z_channels
        if z.dim() != 4 or z.shape[1] != zc:
            raise InputError(
                f"AE decode: expected latents of shape [B, {zc}, h, w], got {tuple(z.shape)}"
            )

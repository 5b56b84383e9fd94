"""Token embeddings for images: patchify, position ids, 2-D sin-cos tables, timesteps."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sincos_2d_table(grid: int, dim: int) -> Tensor:
    """[grid², dim] float32 table; row r·grid + c = concat(sincos(c), sincos(r)) (spec §5.6).

    Within each half: sin block, then cos block, ω_k = 1 / 10000^(k / (dim/4)).
    Computed in float64 like the official code, then stored as float32.
    """
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half // 2, dtype=torch.float64) / (half / 2))
    coords = torch.arange(grid, dtype=torch.float64)

    def sincos(p: Tensor) -> Tensor:  # [grid²] positions → [grid², half]
        angles = p[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cat([sincos(cols.reshape(-1)), sincos(rows.reshape(-1))], dim=1).float()


class PositionEmbedding(nn.Module):
    """A frozen 2-D sin-cos table, stored in the checkpoint (`*_pos_embed.pos_embed`)."""

    def __init__(self, grid: int, dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(grid * grid, dim), requires_grad=False)

    def reset_to_formula(self) -> None:
        grid = math.isqrt(self.pos_embed.shape[0])
        self.pos_embed.data.copy_(sincos_2d_table(grid, self.pos_embed.shape[1]))

    def forward(self, position_ids: Tensor) -> Tensor:
        return self.pos_embed[position_ids]


class TimestepEmbedder(nn.Module):
    """Flow time t ∈ [0, 1] (not scaled by 1000) → [hidden]: sinusoid (cos first), MLP."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(
            -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = t.float()[:, None] * freqs[None]
        features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


def patchify_image(pixels: Tensor, patch: int) -> Tensor:
    """[3, H, W] → [N, p·p·3], row-major over patches, (py, px, c) inside a patch."""
    c, h, w = pixels.shape
    x = pixels.reshape(c, h // patch, patch, w // patch, patch)
    return x.permute(1, 3, 2, 4, 0).reshape(-1, patch * patch * c)  # [h/p, w/p, py, px, c]


def patchify_latent(latent: Tensor, patch: int = 2) -> Tensor:
    """[C, 2h, 2w] → [h·w, p·p·C], (py, px, c) with c fastest (spec §5.3)."""
    c, hh, ww = latent.shape
    x = latent.reshape(c, hh // patch, patch, ww // patch, patch)
    return x.permute(1, 3, 2, 4, 0).reshape(-1, patch * patch * c)  # [h, w, py, px, c]


def unpatchify_latent(tokens: Tensor, h: int, w: int, channels: int, patch: int = 2) -> Tensor:
    """[h·w, p·p·C] → [C, p·h, p·w], the inverse of patchify_latent."""
    x = tokens.reshape(h, w, patch, patch, channels)
    return x.permute(4, 0, 2, 1, 3).reshape(channels, h * patch, w * patch)  # [C, h, py, w, px]


def grid_position_ids(
    h: int, w: int, table_side: int, device: torch.device | str = "cpu"
) -> Tensor:
    """Ids r·S + c of an h×w grid on an S×S table ("extrapolate": S, not w, is the stride)."""
    rows = torch.arange(h, device=device)[:, None]
    cols = torch.arange(w, device=device)[None]
    return (rows * table_side + cols).reshape(-1)

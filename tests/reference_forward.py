"""An independent, cache-free forward of the MoT decoder, for equivalence tests.

It runs a whole sequence in one pass with an explicit attention mask, computes both
experts on every row and selects per row, and re-derives RoPE. It shares only the
weights (and the norm modules) with the implementation under test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Sequence:
    """Segments of one context, with the official position bookkeeping (spec §3.4)."""

    embeds: list[Tensor] = field(default_factory=list)
    positions: list[Tensor] = field(default_factory=list)
    is_gen: list[Tensor] = field(default_factory=list)
    causal: list[bool] = field(default_factory=list)
    rope: int = 0

    def add_text(self, embeds: Tensor) -> None:
        n = embeds.shape[0]
        self._add(
            embeds, torch.arange(self.rope, self.rope + n), torch.zeros(n, dtype=torch.bool), True
        )
        self.rope += n

    def add_image(self, embeds: Tensor, latent: bool) -> None:
        n = embeds.shape[0]
        gen = torch.zeros(n, dtype=torch.bool)
        if latent:
            gen[1:-1] = True
        self._add(embeds, torch.full((n,), self.rope), gen, False)
        self.rope += 1

    def _add(self, embeds, positions, gen, causal):
        self.embeds.append(embeds)
        self.positions.append(positions)
        self.is_gen.append(gen)
        self.causal.append(causal)

    def copy(self) -> Sequence:
        return Sequence(
            list(self.embeds), list(self.positions), list(self.is_gen), list(self.causal), self.rope
        )

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Concatenated embeds, positions, gen flags and the [T, T] visibility mask."""
        sizes = [e.shape[0] for e in self.embeds]
        total = sum(sizes)
        mask = torch.zeros(total, total, dtype=torch.bool)
        start = 0
        for size, causal in zip(sizes, self.causal, strict=True):
            stop = start + size
            mask[start:stop, :start] = True
            block = torch.ones(size, size, dtype=torch.bool)
            mask[start:stop, start:stop] = block.tril() if causal else block
            start = stop
        return torch.cat(self.embeds), torch.cat(self.positions), torch.cat(self.is_gen), mask


def _select(is_gen: Tensor, und: Tensor, gen: Tensor) -> Tensor:
    shape = [is_gen.shape[0]] + [1] * (und.dim() - 1)
    return torch.where(is_gen.view(shape), gen, und)


def _rope(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """x [H, T, D] rotated by positions [T] (rotate-half convention)."""
    d = x.shape[-1]
    freqs = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    angles = positions.float()[:, None] * freqs[None]
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


@torch.inference_mode()
def reference_forward(
    lm, embeds: Tensor, positions: Tensor, is_gen: Tensor, mask: Tensor
) -> Tensor:
    """Final-normed hidden states [T, C] of the whole sequence."""
    cfg = lm.config
    x = embeds
    for layer in lm.model.layers:
        a = layer.self_attn
        h = _select(is_gen, layer.input_layernorm(x), layer.input_layernorm_moe_gen(x))
        q = _select(is_gen, a.q_proj(h), a.q_proj_moe_gen(h)).view(
            -1, cfg.num_attention_heads, cfg.head_dim
        )
        k = _select(is_gen, a.k_proj(h), a.k_proj_moe_gen(h)).view(
            -1, cfg.num_key_value_heads, cfg.head_dim
        )
        v = _select(is_gen, a.v_proj(h), a.v_proj_moe_gen(h)).view(
            -1, cfg.num_key_value_heads, cfg.head_dim
        )
        q = _select(is_gen, a.q_norm(q), a.q_norm_moe_gen(q)).transpose(0, 1)
        k = _select(is_gen, a.k_norm(k), a.k_norm_moe_gen(k)).transpose(0, 1)
        q, k = _rope(q, positions, cfg.rope_theta), _rope(k, positions, cfg.rope_theta)
        group = cfg.num_attention_heads // cfg.num_key_value_heads
        k, v = k.repeat_interleave(group, 0), v.transpose(0, 1).repeat_interleave(group, 0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(0, 1).reshape(x.shape[0], -1)
        x = x + _select(is_gen, a.o_proj(out), a.o_proj_moe_gen(out))
        h = _select(
            is_gen, layer.post_attention_layernorm(x), layer.post_attention_layernorm_moe_gen(x)
        )
        x = x + _select(is_gen, layer.mlp(h), layer.mlp_moe_gen(h))
    return _select(is_gen, lm.model.norm(x), lm.model.norm_moe_gen(x))

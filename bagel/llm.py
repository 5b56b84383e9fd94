"""The Mixture-of-Transformers decoder (Qwen2 with a second, "generation" expert).

Every layer holds two full copies of its weights: the understanding expert (text,
image markers and ViT tokens) and the `*_moe_gen` expert (VAE latent tokens). Rows are
routed by modality; all rows share one attention over one KV context (spec §3).
Module names follow the checkpoint, so `language_model.*` keys load as they are.

A forward runs a packed block of new rows for B contexts at once ([B, T, C]): the three
CFG branches of a denoising step share their query rows and differ only in context and
position, so their linear layers run as one batched matmul.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bagel.attention import FrameMask, attend
from bagel.config import LLMConfig
from bagel.kv import KVContext


class RMSNorm(nn.Module):
    """Normalise in float32, cast back to the input dtype, then scale (Qwen2's order)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class MLP(nn.Module):
    """SwiGLU without biases: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass(frozen=True)
class Routing:
    """Which rows of a packed block go to which expert.

    `gen` holds the indices of VAE-latent rows (generation expert); every other row is
    understanding. None means no gen rows (a text or ViT block).
    """

    num_rows: int
    gen: Tensor | None = None
    und: Tensor | None = None  # derived: the complement of gen, or None if all rows are gen
    # one image block: gen rows are [start, stop) and und rows the few around them (the
    # markers); `apply` then slices and concatenates instead of gathering and scattering
    span: tuple[int, int] | None = None

    @classmethod
    def text(cls, num_rows: int) -> Routing:
        return cls(num_rows)

    @classmethod
    def latent_spans(
        cls, num_rows: int, spans: list[tuple[int, int]], device: torch.device | str = "cpu"
    ) -> Routing:
        """Rows [start, stop) of each span are latent tokens; the rest are understanding."""
        is_gen = torch.zeros(num_rows, dtype=torch.bool)
        for start, stop in spans:
            is_gen[start:stop] = True
        gen = is_gen.nonzero().squeeze(1).to(device)
        und = (~is_gen).nonzero().squeeze(1).to(device)
        span = spans[0] if len(spans) == 1 and und.numel() else None
        return cls(num_rows, gen, und if und.numel() else None, span)

    def to(self, device: torch.device) -> Routing:
        if self.gen is None or self.gen.device == device:
            return self
        und = None if self.und is None else self.und.to(device)
        return Routing(self.num_rows, self.gen.to(device), und, self.span)

    def apply(self, x: Tensor, f_und, f_gen) -> Tensor:
        """out[:, und] = f_und(x[:, und]); out[:, gen] = f_gen(x[:, gen]). x is [B, T, ...]."""
        if self.gen is None:
            return f_und(x)
        if self.und is None:
            return f_gen(x)
        if self.span is not None:
            start, stop = self.span
            y_und = f_und(torch.cat([x[:, :start], x[:, stop:]], dim=1))  # the marker rows
            return torch.cat([y_und[:, :start], f_gen(x[:, start:stop]), y_und[:, start:]], 1)
        y_und, y_gen = f_und(x[:, self.und]), f_gen(x[:, self.gen])
        out = y_und.new_empty(x.shape[0], x.shape[1], *y_und.shape[2:])
        out[:, self.und] = y_und
        out[:, self.gen] = y_gen
        return out


@dataclass(frozen=True)
class Forward:
    """What every layer needs to know about one packed forward (on one device)."""

    routing: Routing
    rope: tuple[Tensor, Tensor]  # cos, sin: [B, 1, T, D]
    contexts: list[KVContext]  # one per batch row
    causal: bool  # among the new rows: causal (text) or bidirectional (image block)
    write: bool  # append the rows' K/V to the contexts (the caller commits)
    backend: str  # attention backend
    frames: list[FrameMask] | None = None  # a window of frames: the mask per batch row


def rope_cos_sin(
    positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Rotate-half RoPE tables for positions [B, T]: cos, sin of shape [B, 1, T, D].

    Computed in float32, then cast to the model dtype, as Qwen2 does.
    """
    inv_freq = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim
    )
    angles = positions.float()[..., None] * inv_freq  # [B, T, D/2]
    emb = torch.cat([angles, angles], dim=-1)[:, None]  # [B, 1, T, D]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class MoTAttention(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        kv = cfg.num_key_value_heads * d
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            d,
        )
        for suffix in ("", "_moe_gen"):
            setattr(self, f"q_proj{suffix}", nn.Linear(h, h, bias=True))
            setattr(self, f"k_proj{suffix}", nn.Linear(h, kv, bias=True))
            setattr(self, f"v_proj{suffix}", nn.Linear(h, kv, bias=True))
            setattr(self, f"o_proj{suffix}", nn.Linear(h, h, bias=False))
            setattr(self, f"q_norm{suffix}", RMSNorm(d, cfg.rms_norm_eps))
            setattr(self, f"k_norm{suffix}", RMSNorm(d, cfg.rms_norm_eps))

    def forward(self, x: Tensor, fwd: Forward, layer: int) -> Tensor:
        b, t, _ = x.shape
        routing = fwd.routing
        q = routing.apply(x, self.q_proj, self.q_proj_moe_gen).view(b, t, self.num_heads, -1)
        k = routing.apply(x, self.k_proj, self.k_proj_moe_gen).view(b, t, self.num_kv_heads, -1)
        v = routing.apply(x, self.v_proj, self.v_proj_moe_gen).view(b, t, self.num_kv_heads, -1)
        if routing.gen is not None:  # the official gen path runs QK-norm and RoPE in float32
            q, k = q.float(), k.float()
        q = routing.apply(q, self.q_norm, self.q_norm_moe_gen).transpose(1, 2)  # [B, H, T, D]
        k = routing.apply(k, self.k_norm, self.k_norm_moe_gen).transpose(1, 2)  # [B, Hkv, T, D]
        q = apply_rope(q, *fwd.rope).to(x.dtype)
        k = apply_rope(k, *fwd.rope).to(x.dtype)
        v = v.transpose(1, 2)  # [B, Hkv, T, D]
        out = torch.stack(
            [
                attend(
                    q[i],
                    ctx.chunks(layer),
                    k[i],
                    v[i],
                    fwd.causal,
                    fwd.backend,
                    None if fwd.frames is None else fwd.frames[i],
                )
                for i, ctx in enumerate(fwd.contexts)
            ]
        )  # [B, H, T, D]
        if fwd.write:
            for i, ctx in enumerate(fwd.contexts):
                ctx.write(layer, k[i], v[i])
        out = out.transpose(1, 2).reshape(b, t, -1)
        return routing.apply(out, self.o_proj, self.o_proj_moe_gen)


class MoTDecoderLayer(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.self_attn = MoTAttention(cfg)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
        self.mlp_moe_gen = MLP(cfg.hidden_size, cfg.intermediate_size)
        for name in ("input_layernorm", "post_attention_layernorm"):
            setattr(self, name, RMSNorm(cfg.hidden_size, cfg.rms_norm_eps))
            setattr(self, f"{name}_moe_gen", RMSNorm(cfg.hidden_size, cfg.rms_norm_eps))

    def forward(self, x: Tensor, fwd: Forward, layer: int) -> Tensor:
        route = fwd.routing.apply
        x = x + self.self_attn(
            route(x, self.input_layernorm, self.input_layernorm_moe_gen), fwd, layer
        )
        h = route(x, self.post_attention_layernorm, self.post_attention_layernorm_moe_gen)
        return x + route(h, self.mlp, self.mlp_moe_gen)


def layer_device(layer: MoTDecoderLayer) -> torch.device:
    """Where a decoder layer computes: its weights' device, or for a layer streamed from
    CPU memory (the offload profiles) the device it is streamed to."""
    streamed = getattr(layer, "execution_device", None)
    return streamed if streamed is not None else layer.input_layernorm.weight.device


class MoTModel(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(MoTDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class MoTLanguageModel(nn.Module):
    """`language_model` in the checkpoint: the decoder stack plus the untied LM head."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        if not cfg.qk_norm or cfg.tie_word_embeddings:
            raise ValueError("BAGEL's decoder needs qk_norm=True and tie_word_embeddings=False")
        self.config = cfg
        self.model = MoTModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        routing: Routing,
        contexts: list[KVContext],
        causal: bool,
        write: bool,
        backend: str,
        frames: list[FrameMask] | None = None,
        norm: bool = True,
    ) -> Tensor:
        """Run packed rows through all layers and (unless `norm` is False) the final
        per-expert norm.

        Args:
            x: [B, T, C] input embeddings, one batch row per context.
            positions: [B, T] RoPE position ids.
            routing: the expert of each of the T rows (same for every batch row).
            contexts: B contexts whose cached K/V the rows attend to.
            causal: causal among the new rows (text) or bidirectional (image block).
            write: append the rows' K/V to the contexts (the caller commits).
            frames: the rows are a window of noisy frames; one FrameMask per context.
        Returns:
            [B, T, C] final hidden states.
        """
        fwd = None
        for i, layer in enumerate(self.model.layers):
            device = layer_device(layer)  # layers may sit on several GPUs
            if fwd is None or fwd.rope[0].device != device:
                rope = rope_cos_sin(
                    positions.to(device), self.config.head_dim, self.config.rope_theta, x.dtype
                )
                fwd = Forward(routing.to(device), rope, contexts, causal, write, backend, frames)
            x = layer(x.to(device), fwd, i)
        return self.final_norm(x, routing) if norm else x

    def final_norm(self, x: Tensor, routing: Routing) -> Tensor:
        """The per-expert norm after the last layer: [B, T, C] → [B, T, C]."""
        device = self.model.norm.weight.device
        return routing.to(device).apply(x.to(device), self.model.norm, self.model.norm_moe_gen)

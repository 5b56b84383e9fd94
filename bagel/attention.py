"""Attention of new query rows over a cached context.

A context's keys live in one or more chunks (blocks shared between forks, see kv.py).
The cache is attended as one buffer (the chunks concatenated when there are several),
the new rows as a second part, and the two partial results are merged with their
log-sum-exp — the split softmax of flash-decoding. The result thus depends on the
cached tokens only, never on how they are split into blocks, so a replayed or resumed
session reproduces its outputs exactly. Cached rows are fully visible to every query
row; the new rows see each other causally (text) or fully (an image block), which is
exactly the bottom-right-aligned mask of flash-attn over a cache.

A window of noisy frames (diffusion forcing) packs several image blocks as new rows: a
`FrameMask` makes frame j see itself fully and, block-causally, the frames before it
(or none of them). The cache is still attended once for all rows; only the small
new-row partial is split per frame.

Layouts: q [H, Lq, D]; cached k/v chunks [Hkv, Lk, D] (views into the KV blocks);
new k/v [Hkv, Lq, D]. Query head h uses KV head h // (H // Hkv).

Backends, chosen per device:
- "flash": flash-attn on CUDA (optional import);
- "sdpa": torch's own fused kernels (those scaled_dot_product_attention dispatches to),
  called through the ops that also return the log-sum-exp: the CPU flash kernel; on
  CUDA the flash kernel for 16-bit dtypes and the memory-efficient one for float32;
- "math": explicit softmax in float32, on any device; the reference for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

Partial = tuple[Tensor, Tensor]  # (out [H, Lq, D], lse [H, Lq] float32)

try:  # optional: CUDA only, never required
    from flash_attn import flash_attn_func as _flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    _flash_attn_func = None

BACKENDS = ("flash", "sdpa", "math")


@dataclass(frozen=True)
class FrameMask:
    """The new rows are consecutive frames of these sizes (image blocks, markers included).

    Frame j sees every cached row, all of its own rows and, if `see_earlier`, all rows of
    frames 0..j-1 (block-causal); otherwise no other frame (block-diagonal).
    """

    sizes: tuple[int, ...]
    see_earlier: bool = True

    def spans(self) -> list[tuple[int, int, int]]:
        """(first query row, end row, first visible new key row) of every frame."""
        out, start = [], 0
        for size in self.sizes:
            out.append((start, start + size, 0 if self.see_earlier else start))
            start += size
        return out


def default_backend(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda" and _flash_attn_func is not None:
        return "flash"
    if device.type in ("cpu", "cuda"):
        return "sdpa"
    return "math"


def check_backend(name: str, device: torch.device | str) -> str:
    """Validate a backend name for a device; raise ValueError naming the choices."""
    if name not in BACKENDS:
        raise ValueError(f"attention backend {name!r} is unknown; expected one of {BACKENDS}")
    if name == "flash" and (_flash_attn_func is None or torch.device(device).type != "cuda"):
        raise ValueError("attention backend 'flash' needs CUDA and the flash-attn package")
    if name == "sdpa" and torch.device(device).type not in ("cpu", "cuda"):
        raise ValueError(
            f"attention backend 'sdpa' runs on cpu and cuda; use 'math' on {torch.device(device)}"
        )
    return name


def attend(
    q: Tensor,
    cached: list[tuple[Tensor, Tensor]],
    k: Tensor,
    v: Tensor,
    causal: bool,
    backend: str,
    frames: FrameMask | None = None,
) -> Tensor:
    """Attention of q over the cached chunks (fully visible) and the new k/v.

    Args:
        q: [H, Lq, D] queries (after QK-norm and RoPE).
        cached: list of (k, v) chunks, each [Hkv, Lk, D].
        k, v: [Hkv, Lq, D] keys and values of the query rows themselves.
        causal: new row i sees new rows 0..i (text); otherwise all new rows (images).
        backend: one of BACKENDS.
        frames: the new rows are a window of frames masked per FrameMask (then `causal`
            must be False).
    Returns:
        [H, Lq, D] in q's dtype.
    """
    partial = _PARTIAL[backend]
    q = q.contiguous()  # once, so the per-chunk calls below reshape it as views
    cached = [(ck, cv) for ck, cv in cached if ck.shape[1] > 0]
    if len(cached) > 1:
        # One buffer for the whole cache: the result then depends on the cached tokens
        # only, not on how forks, rewinds and drops split them into blocks (a replay or a
        # resumed snapshot reproduces a session bit for bit), and on a GPU it is also
        # faster than a kernel and a merge pass per block (docs/benchmarks.md).
        cached = [(torch.cat([ck for ck, _ in cached], 1), torch.cat([cv for _, cv in cached], 1))]
    parts = [partial(q, ck, cv, False) for ck, cv in cached]
    if frames is None:
        parts.append(partial(q, k, v, causal))
        return merge_partials(parts).to(q.dtype)
    assert not causal and sum(frames.sizes) == q.shape[1], "frames must tile the new rows"
    out = []
    for start, stop, first_key in frames.spans():
        rows = [(o[:, start:stop], lse[:, start:stop]) for o, lse in parts]
        rows.append(partial(q[:, start:stop], k[:, first_key:stop], v[:, first_key:stop], False))
        out.append(merge_partials(rows))
    return torch.cat(out, dim=1).to(q.dtype)


def merge_partials(parts: list[Partial]) -> Tensor:
    """Combine softmax-normalised partial outputs by their log-sum-exp weights."""
    if len(parts) == 1:
        return parts[0][0]
    weights = torch.softmax(torch.stack([lse for _, lse in parts]), dim=0)  # [P, H, Lq]
    out = torch.zeros_like(parts[0][0], dtype=torch.float32)
    for (o, _), w in zip(parts, weights, strict=True):
        out.addcmul_(o, w.unsqueeze(-1))  # one pass per part, accumulated in float32
    return out


def _group(q: Tensor, k: Tensor) -> int:
    return q.shape[0] // k.shape[0]


def _partial_math(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Partial:
    g = _group(q, k)
    k = k.repeat_interleave(g, dim=0).float()
    v = v.repeat_interleave(g, dim=0).float()
    scores = (q.float() @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # [H, Lq, Lk]
    if causal:
        lq, lk = scores.shape[-2:]
        hidden = torch.ones(lq, lk, dtype=torch.bool, device=q.device).triu(lk - lq + 1)
        scores = scores.masked_fill(hidden, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return torch.softmax(scores, dim=-1) @ v, lse


def _partial_sdpa(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Partial:
    h, lq, d = q.shape
    hkv = k.shape[0]
    g = h // hkv
    if causal:  # the new rows only: a small square block, expand the KV heads
        qq, kk, vv = q, k.repeat_interleave(g, dim=0), v.repeat_interleave(g, dim=0)
    else:  # fold the query group into the row axis so the cached K/V are read as is
        qq, kk, vv = q.reshape(hkv, g * lq, d), k, v  # [Hkv, G·Lq, D]
    out, lse = _fused_kernel(qq[None], kk[None], vv[None], causal, d**-0.5)
    rows = qq.shape[1]  # the CUDA kernels may pad the log-sum-exp rows
    return out[0].reshape(h, lq, d), lse[0, :, :rows].reshape(h, lq).float()


def _fused_kernel(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float) -> Partial:
    """torch's fused attention on [1, H, L, D] → (out, log-sum-exp [1, H, L])."""
    ops = torch.ops.aten
    if q.device.type == "cpu":
        return ops._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
    if q.dtype in (torch.float16, torch.bfloat16):
        out, lse = ops._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, scale=scale)[:2]
        return out, lse
    out, lse = ops._scaled_dot_product_efficient_attention(
        q, k, v, None, True, 0.0, causal, scale=scale
    )[:2]
    return out, lse


def _partial_flash(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Partial:  # pragma: no cover
    # flash-attn wants [B, L, H, D] with the last dim contiguous and handles GQA itself.
    out, lse, _ = _flash_attn_func(
        q.transpose(0, 1)[None].to(torch.bfloat16),
        k.transpose(0, 1)[None].to(torch.bfloat16),
        v.transpose(0, 1)[None].to(torch.bfloat16),
        causal=causal,
        return_attn_probs=True,
    )
    return out[0].transpose(0, 1), lse[0].float()


_PARTIAL = {"math": _partial_math, "sdpa": _partial_sdpa, "flash": _partial_flash}

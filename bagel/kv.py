"""The KV context: append-only blocks shared between forks and prefix views.

A `KVContext` is a list of spans (block, start, stop) — rows start..stop-1 of each block
belong to it, in order — plus its `rope`, the next free position id. Keys are stored
after QK-norm and RoPE, so positions are baked in: a context grows only at its tail, is
cut back at a segment boundary (`truncate`), or skips rows in the middle (`without`,
`drop`) while every kept row keeps its position. Attention sees the cached rows as one
unordered, fully visible set, so a skipped row simply stops being attended to.

Sharing without copying:
- `fork()` copies the span list, not the tensors: both contexts read the same blocks;
- only the context that allocated a block (its owner) may write into it, and only past
  its own rows, so what a fork can see is never overwritten. A fork, a prefix view or
  a truncated context writes its next rows into a fresh block;
- a new block is at least as large as everything the context has written itself, so a
  context that grew to n tokens uses O(log n) blocks (plus one span per skipped range),
  an append never moves earlier tokens, and a fork (e.g. the scratch context of text
  generation) starts small;
- skipping rows copies nothing: the rows stay in their block, so a context taken before
  the skip (e.g. for undo) still reads them.

Writes happen layer by layer during a forward (`write`) and become part of the context
only at `commit`; a forward that fails half-way leaves the context as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

MIN_BLOCK_TOKENS = 256


@dataclass(frozen=True)
class KVLayout:
    """Shape, dtype and per-layer device of the K/V tensors of one model."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    devices: tuple[torch.device, ...]  # one per layer (multi-GPU placement)

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype.itemsize


class KVBlock:
    """Storage for up to `capacity` tokens: per layer, k and v of shape [Hkv, capacity, D]."""

    def __init__(self, layout: KVLayout, capacity: int):
        shape = (layout.num_kv_heads, capacity, layout.head_dim)
        self.k = [torch.empty(shape, dtype=layout.dtype, device=d) for d in layout.devices]
        self.v = [torch.empty(shape, dtype=layout.dtype, device=d) for d in layout.devices]
        self.capacity = capacity
        self.filled = 0  # rows written and committed by the owner

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k) + sum(t.nbytes for t in self.v)


@dataclass
class KVContext:
    """The cached K/V of one token sequence, and its RoPE bookkeeping."""

    layout: KVLayout
    spans: list[tuple[KVBlock, int, int]] = field(default_factory=list)  # (block, start, stop)
    rope: int = 0
    _owned: KVBlock | None = None  # the tail block this context may append into
    _pending: int = 0  # rows written by the forward in flight, not yet committed
    _grown: int = 0  # rows this context wrote into blocks it allocated

    @classmethod
    def from_tensors(
        cls, layout: KVLayout, ks: list[Tensor], vs: list[Tensor], rope: int
    ) -> KVContext:
        """A context holding given keys and values ([Hkv, n, D] per layer, of the layout's
        dtype, on any device) in one block of its own, so it can keep growing.

        The rows are copied onto the layout's devices, as a forward would write them.
        """
        if len(ks) != layout.num_layers or len(vs) != layout.num_layers:
            raise ValueError(f"expected {layout.num_layers} layers, got {len(ks)} k, {len(vs)} v")
        n = ks[0].shape[1] if ks and ks[0].dim() == 3 else 0
        shape = (layout.num_kv_heads, n, layout.head_dim)
        for layer, (k, v) in enumerate(zip(ks, vs, strict=True)):
            for name, t in (("k", k), ("v", v)):
                if tuple(t.shape) != shape or t.dtype != layout.dtype:
                    raise ValueError(
                        f"{name}[{layer}]: expected {list(shape)} {layout.dtype}, "
                        f"got {list(t.shape)} {t.dtype}"
                    )
        ctx = cls(layout)
        ctx.reserve(n)
        for layer, (k, v) in enumerate(zip(ks, vs, strict=True)):
            ctx.write(layer, k, v)
        ctx.commit(rope)
        return ctx

    @property
    def length(self) -> int:
        """Number of cached tokens (the reference's kv_len)."""
        return sum(stop - start for _, start, stop in self.spans)

    def chunks(self, layer: int) -> list[tuple[Tensor, Tensor]]:
        """Views [Hkv, rows, D] of this context's keys and values at one layer."""
        return [(b.k[layer][:, a:z], b.v[layer][:, a:z]) for b, a, z in self.spans]

    # -- growth -------------------------------------------------------------------

    def reserve(self, n: int) -> None:
        """Make room for n new rows at the tail; called once before a writing forward."""
        tail, _, stop = self.spans[-1] if self.spans else (None, 0, 0)
        writable = (
            tail is not None
            and tail is self._owned
            and tail.filled == stop
            and stop + n <= tail.capacity
        )
        if not writable:
            block = KVBlock(self.layout, max(n, self._grown, MIN_BLOCK_TOKENS))
            self.spans.append((block, 0, 0))
            self._owned = block
        self._pending = n

    def write(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Store the new rows' k, v ([Hkv, n, D]) of one layer after the cached ones."""
        block, _, stop = self.spans[-1]
        n = k.shape[1]
        assert block is self._owned and n == self._pending, "reserve() must precede write()"
        block.k[layer][:, stop : stop + n] = k
        block.v[layer][:, stop : stop + n] = v

    def commit(self, rope_advance: int) -> None:
        """Make the rows written since `reserve` part of the context."""
        block, start, stop = self.spans[-1]
        self.spans[-1] = (block, start, stop + self._pending)
        block.filled = stop + self._pending
        self._grown += self._pending
        self.rope += rope_advance
        self._pending = 0

    # -- sharing ------------------------------------------------------------------

    def fork(self) -> KVContext:
        """A context with the same past; the two then grow independently. O(#blocks)."""
        return KVContext(self.layout, list(self.spans), self.rope)

    def prefix(self, length: int, rope: int) -> KVContext:
        """A read-only-past view of the first `length` tokens (e.g. a CFG context).

        `rope` is the position counter the context had at that length; the caller keeps
        it in its segment log (positions are not recoverable from the keys).
        """
        if not 0 <= length <= self.length:
            raise ValueError(f"prefix length {length} outside 0..{self.length}")
        spans, left = [], length
        for block, start, stop in self.spans:
            if left == 0:
                break
            spans.append((block, start, min(stop, start + left)))
            left -= spans[-1][2] - start
        return KVContext(self.layout, spans, rope)

    def truncate(self, length: int, rope: int) -> None:
        """Cut this context back to its first `length` tokens (undo), in place."""
        cut = self.prefix(length, rope)
        self.spans, self.rope, self._owned = cut.spans, rope, None

    def without(self, ranges: list[tuple[int, int]]) -> KVContext:
        """A read-only-past view that skips tokens [start, stop) of each range.

        Ranges index this context's tokens (0..length), must not overlap and may come in
        any order. The kept tokens keep their keys, hence their positions, and `rope` is
        unchanged: skipping lowers `length`, never the next position.
        """
        cuts = sorted(ranges)
        for i, (a, z) in enumerate(cuts):
            if not 0 <= a < z <= self.length or (i and cuts[i - 1][1] > a):
                raise ValueError(f"ranges {cuts} must be disjoint, non-empty, in 0..{self.length}")
        spans, offset = [], 0
        for block, start, stop in self.spans:  # this span holds tokens offset.. of the context
            keep = start
            for a, z in cuts:
                lo = start + max(a - offset, 0)
                hi = start + min(z - offset, stop - start)
                if lo < hi:  # the cut overlaps this span
                    if keep < lo:
                        spans.append((block, keep, lo))
                    keep = hi
            if keep < stop:
                spans.append((block, keep, stop))
            offset += stop - start
        return KVContext(self.layout, spans, self.rope)

    def drop(self, ranges: list[tuple[int, int]]) -> None:
        """Skip tokens in place (see `without`). The rows stay in their blocks, so a fork
        taken before still reads them; the tail block stays writable if it was kept."""
        self.spans = self.without(ranges).spans

    # -- accounting ---------------------------------------------------------------

    def blocks(self) -> list[KVBlock]:
        return [b for b, _, _ in self.spans]

    @property
    def nbytes_used(self) -> int:
        """Bytes of the K/V rows this context reads (shared rows counted here too)."""
        return self.length * self.layout.bytes_per_token


def allocated_bytes(*contexts: KVContext) -> int:
    """Bytes allocated by the blocks that any of the contexts use, each block counted once."""
    seen: dict[int, KVBlock] = {}
    for ctx in contexts:
        for block in ctx.blocks():
            seen[id(block)] = block
    return sum(b.nbytes for b in seen.values())

"""The KV context: forks share storage, prefixes are views, writes never reach a fork."""

from __future__ import annotations

import math

import pytest
import torch

from bagel.kv import MIN_BLOCK_TOKENS, KVContext, KVLayout, allocated_bytes

LAYOUT = KVLayout(
    num_layers=2,
    num_kv_heads=1,
    head_dim=4,
    dtype=torch.float32,
    devices=(torch.device("cpu"),) * 2,
)


def append(ctx: KVContext, values: list[float], rope_advance: int | None = None) -> None:
    n = len(values)
    ctx.reserve(n)
    rows = torch.tensor(values).view(1, n, 1).expand(1, n, 4)
    for layer in range(LAYOUT.num_layers):
        ctx.write(layer, rows, rows)
    ctx.commit(n if rope_advance is None else rope_advance)


def keys(ctx: KVContext) -> list[float]:
    return torch.cat([k[0, :, 0] for k, _ in ctx.chunks(1)]).tolist()


def test_append_commit_and_rope():
    ctx = KVContext(LAYOUT)
    append(ctx, [1, 2, 3])
    append(ctx, [4, 5], rope_advance=1)
    assert keys(ctx) == [1, 2, 3, 4, 5] and ctx.length == 5 and ctx.rope == 4
    assert len(ctx.spans) == 1  # the owner appends in place


def test_fork_shares_the_past_and_diverges():
    parent = KVContext(LAYOUT)
    append(parent, [1, 2])
    child = parent.fork()
    assert child.spans[0][0] is parent.spans[0][0]  # no copy
    append(parent, [3])
    append(child, [9, 9])
    assert keys(parent) == [1, 2, 3] and keys(child) == [1, 2, 9, 9]
    assert len(child.spans) == 2  # the fork wrote into its own block
    assert allocated_bytes(parent, child) == sum(
        b.nbytes for b in {id(b): b for b in parent.blocks() + child.blocks()}.values()
    )
    assert allocated_bytes(parent, child) < allocated_bytes(parent) + allocated_bytes(child)


def test_prefix_is_a_view_that_later_appends_do_not_reach():
    ctx = KVContext(LAYOUT)
    append(ctx, [1, 2, 3])
    view = ctx.prefix(2, rope=2)
    append(ctx, [4])
    assert keys(view) == [1, 2] and view.rope == 2
    append(view, [7])
    assert keys(ctx) == [1, 2, 3, 4] and keys(view) == [1, 2, 7]


def test_truncate_then_append_does_not_corrupt_a_fork():
    ctx = KVContext(LAYOUT)
    append(ctx, [1, 2, 3, 4])
    fork = ctx.fork()
    ctx.truncate(2, rope=2)
    append(ctx, [8, 8])
    assert keys(ctx) == [1, 2, 8, 8] and keys(fork) == [1, 2, 3, 4]


def test_uncommitted_writes_are_invisible():
    ctx = KVContext(LAYOUT)
    append(ctx, [1, 2])
    ctx.reserve(3)
    ctx.write(0, torch.zeros(1, 3, 4), torch.zeros(1, 3, 4))  # a forward that then fails
    assert ctx.length == 2 and keys(ctx) == [1, 2]
    append(ctx, [5])
    assert keys(ctx) == [1, 2, 5]


def test_blocks_grow_geometrically():
    ctx = KVContext(LAYOUT)
    for _ in range(40):
        append(ctx, [0.0] * 100)
    assert ctx.length == 4000
    # each new block is as large as all rows before it: O(log n) blocks, not one per append
    assert len(ctx.spans) <= math.ceil(math.log2(4000 / MIN_BLOCK_TOKENS)) + 2
    assert ctx.spans[0][0].capacity == MIN_BLOCK_TOKENS


def test_without_skips_rows_in_the_middle_without_copying():
    ctx = KVContext(LAYOUT)
    append(ctx, [1, 2, 3])
    append(ctx, [4, 5, 6], rope_advance=1)
    view = ctx.without([(4, 5), (1, 3)])  # any order
    assert keys(view) == [1, 4, 6] and view.length == 3 and view.rope == ctx.rope == 4
    assert {id(b) for b in view.blocks()} == {id(b) for b in ctx.blocks()}  # no copy
    assert keys(ctx) == [1, 2, 3, 4, 5, 6]  # a view: the context itself is unchanged
    assert keys(view.without([(0, 1)])) == [4, 6]  # ranges index the view's own tokens
    assert keys(view.prefix(2, rope=4)) == [1, 4]


def test_without_across_blocks_and_forks():
    parent = KVContext(LAYOUT)
    append(parent, [1, 2, 3])
    child = parent.fork()
    append(child, [4, 5])  # a second block
    assert keys(child.without([(2, 4)])) == [1, 2, 5]  # one range over both blocks
    assert child.without([(0, 5)]).length == 0 and child.without([(0, 5)]).spans == []


def test_drop_in_place_keeps_appending_into_the_tail_block():
    ctx = KVContext(LAYOUT)
    append(ctx, [1, 2, 3, 4])
    before = ctx.fork()  # e.g. kept for undo
    ctx.drop([(1, 3)])
    append(ctx, [5])
    assert keys(ctx) == [1, 4, 5] and ctx.rope == 5
    assert len(ctx.blocks()) == 2 and ctx.blocks()[0] is ctx.blocks()[1]  # same block
    assert keys(before) == [1, 2, 3, 4]  # the skipped rows are still there for the fork
    # dropping the tail: the next rows cannot go after it in the block (a fork's rows
    # would be overwritten), so they go to a fresh block
    ctx.drop([(2, 3)])
    append(ctx, [6])
    assert keys(ctx) == [1, 4, 6] and keys(before) == [1, 2, 3, 4]
    assert len({id(b) for b in ctx.blocks()}) == 2


def test_truncate_after_a_drop_then_restore_from_the_fork():
    ctx = KVContext(LAYOUT)
    append(ctx, [1, 2, 3, 4])
    undo = ctx.fork()
    ctx.drop([(0, 2)])
    append(ctx, [7, 8])
    ctx.truncate(1, rope=4)
    assert keys(ctx) == [3]
    restored = undo.prefix(3, rope=3)
    append(restored, [9])
    assert keys(restored) == [1, 2, 3, 9] and keys(undo) == [1, 2, 3, 4]


def test_without_rejects_bad_ranges():
    ctx = KVContext(LAYOUT)
    append(ctx, [1, 2, 3])
    for bad in ([(2, 1)], [(0, 4)], [(-1, 1)], [(0, 2), (1, 3)], [(1, 1)]):
        with pytest.raises(ValueError, match="must be disjoint"):
            ctx.without(bad)

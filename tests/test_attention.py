"""Chunked attention over a cache == one attention over the concatenation with the
bottom-right-aligned mask, for every backend available here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bagel.attention import attend, check_backend, default_backend

BACKENDS = ["math", "sdpa"]


def reference(q, cached, k, v, causal):
    keys = torch.cat([c[0] for c in cached] + [k], dim=1)
    values = torch.cat([c[1] for c in cached] + [v], dim=1)
    group = q.shape[0] // k.shape[0]
    keys, values = keys.repeat_interleave(group, 0), values.repeat_interleave(group, 0)
    lq, lk = q.shape[1], keys.shape[1]
    # bottom-right aligned: new row i sees every cached key and new keys 0..i
    mask = torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq) if causal else None
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("chunk_sizes", [[], [7], [5, 0, 9, 3]])
def test_chunked_equals_concatenated(backend, causal, chunk_sizes):
    g = torch.Generator().manual_seed(len(chunk_sizes) + causal)
    h, hkv, d, lq = 4, 2, 16, 6

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    cached = [(rnd(hkv, n, d), rnd(hkv, n, d)) for n in chunk_sizes]
    q, k, v = rnd(h, lq, d), rnd(hkv, lq, d), rnd(hkv, lq, d)
    out = attend(q, cached, k, v, causal, backend)
    torch.testing.assert_close(out, reference(q, cached, k, v, causal), rtol=1e-5, atol=1e-5)


def test_cached_chunks_are_read_in_place():
    # a view with a stride over unused capacity, as the KV blocks hand out
    block = torch.randn(2, 100, 16)
    view = block[:, :30]
    q, k, v = torch.randn(4, 3, 16), torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    out = attend(q, [(view, view)], k, v, False, "sdpa")
    torch.testing.assert_close(out, reference(q, [(view.clone(), view.clone())], k, v, False))


def test_backend_choice_and_errors():
    assert default_backend("cpu") == "sdpa"
    with pytest.raises(ValueError, match="unknown"):
        check_backend("fast", "cpu")
    with pytest.raises(ValueError, match="needs CUDA"):
        check_backend("flash", "cpu")

"""The compiled decoder path equals eager on the tiny model (inductor on the CPU)."""

from __future__ import annotations

import torch

from bagel.checkpoint import load
from bagel.flow import SamplerParams


def test_compiled_equals_eager(tiny_dir, pipe):
    compiled = load(tiny_dir, device="cpu", compile=True)
    norm = compiled.net.language_model.model.layers[0].input_layernorm
    assert norm.forward is not type(norm).forward  # wrapped by torch.compile
    params = SamplerParams(num_timesteps=3, cfg_text_scale=4.0, cfg_img_scale=1.0)
    latents, replies = [], []
    for p in (pipe, compiled):
        ctx, dropped = p.new_context(), p.new_context()
        p.append_text(ctx, "a red cat on a wall")
        noise = torch.randn(16, 4, 4, generator=torch.Generator().manual_seed(1))
        latents.append(p.generate_image(ctx, 32, 32, params, cfg_text_ctx=dropped, noise=noise))
        replies.append(p.generate_text(ctx, max_new_tokens=2, output_scores=True).scores)
    eager, fast = latents[0].latent, latents[1].latent
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-5 * float(eager.abs().max()))
    torch.testing.assert_close(replies[1], replies[0], rtol=1e-5, atol=1e-5)


def test_sliced_routing_of_one_image_block_equals_gather_and_scatter():
    from dataclasses import replace

    from bagel.llm import Routing

    torch.manual_seed(0)
    und, gen = torch.nn.Linear(32, 24), torch.nn.Linear(32, 24)
    sliced = Routing.latent_spans(20, [(1, 19)])
    assert sliced.span == (1, 19)
    scattered = replace(sliced, span=None)
    x = torch.randn(3, 20, 32)
    with torch.inference_mode():
        fast, slow = sliced.apply(x, und, gen), scattered.apply(x, und, gen)
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-6)
    assert torch.allclose(fast[:, 0], und(x[:, 0])) and torch.allclose(fast[:, 5], gen(x[:, 5]))
    assert Routing.latent_spans(40, [(1, 19), (21, 39)]).span is None  # a window: gather

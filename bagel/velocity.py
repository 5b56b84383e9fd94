"""The denoising forward: noisy image blocks against every guidance branch at once.

The query rows are the same for every branch (main, text-dropped, image-dropped); only
their contexts and positions differ, so the branches run as one batch. Nothing is
written to any context. With feature caches (TaylorSeer), a branch whose cache says so
skips the decoder and takes its extrapolated output.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bagel.attention import FrameMask
from bagel.contexts import wrap_image
from bagel.flow import SamplerParams
from bagel.forcing import FRAME_ROPE_STRIDE
from bagel.kv import KVContext
from bagel.llm import Routing
from bagel.model import Bagel
from bagel.taylorseer import TaylorCache
from bagel.tokenizer import BagelTokenizer


def feature_caches(params: SamplerParams) -> list[TaylorCache] | None:
    """One cache per guidance branch (main, text-dropped, image-dropped), or None."""
    if params.feature_cache == "none":
        return None
    return [TaylorCache(params.feature_cache_interval) for _ in range(3)]


class VelocityModel:
    """Velocities of noisy image blocks [.., N, 64] after each of a set of contexts."""

    def __init__(self, net: Bagel, tokenizer: BagelTokenizer, backend: str):
        self.net, self.tokenizer, self.backend = net, tokenizer, backend

    def velocity(
        self,
        x: Tensor,
        t: Tensor,
        grid: tuple[int, int],
        branches: list[KVContext],
        routing: Routing,
        caches: list[TaylorCache] | None = None,
    ) -> Tensor:
        """One forward of the noisy query block against every branch at once → [B, N, 64].

        `caches` (one per possible branch): feature caches that may skip the decoder.
        """
        rows = x.shape[0] + 2
        positions = torch.stack([torch.full((rows,), c.rope) for c in branches])
        return self._latent_forward(
            x[None], t.reshape(1), grid, branches, routing, positions, caches=caches
        )[:, 0]

    def frames_velocity(
        self,
        x: Tensor,
        t: Tensor,
        grid: tuple[int, int],
        branches: list[KVContext],
        see_earlier: list[bool],
        caches: list[TaylorCache] | None = None,
    ) -> Tensor:
        """[W, N, 64] frames at [W] timesteps → [B, W, N, 64] (BagelPipeline.frames_velocity
        states the contract)."""
        frames, rows = x.shape[0], x.shape[1] + 2  # each frame: markers + N latent rows
        spans = [(j * rows + 1, (j + 1) * rows - 1) for j in range(frames)]
        routing = Routing.latent_spans(frames * rows, spans, self.net.device)
        positions = torch.stack(
            [
                (
                    c.rope + (FRAME_ROPE_STRIDE if see else 0) * torch.arange(frames)
                ).repeat_interleave(rows)
                for c, see in zip(branches, see_earlier, strict=True)
            ]
        )  # [B, W·(N+2)]
        masks = [FrameMask((rows,) * frames, see) for see in see_earlier]
        return self._latent_forward(x, t, grid, branches, routing, positions, masks, caches)

    def _latent_forward(
        self,
        x: Tensor,
        t: Tensor,
        grid: tuple[int, int],
        branches: list[KVContext],
        routing: Routing,
        positions: Tensor,
        masks: list[FrameMask] | None = None,
        caches: list[TaylorCache] | None = None,
    ) -> Tensor:
        """W noisy image blocks [W, N, 64] at times [W] → velocities [B, W, N, 64]."""
        with torch.inference_mode():
            query = torch.cat(
                [
                    wrap_image(
                        self.net, self.tokenizer, self.net.latent_tokens(xj, tj.reshape(1), grid)
                    )
                    for xj, tj in zip(x, t, strict=True)
                ]
            )  # [W·(N+2), C]: per frame <|vision_start|>, N latents, <|vision_end|>
            hidden = self._decode(query, positions, routing, branches, masks, caches)
            hidden = hidden.unflatten(1, (x.shape[0], -1))[:, :, 1:-1]  # [B, W, N, C]
            return self.net.llm2vae(hidden.to(self.net.device))

    def _decode(
        self,
        query: Tensor,
        positions: Tensor,
        routing: Routing,
        branches: list[KVContext],
        masks: list[FrameMask] | None,
        caches: list[TaylorCache] | None,
    ) -> Tensor:
        """The decoder's normed output [B, T, C] for the query rows [T, C] in each branch.

        With feature caches, the branches whose cache says so skip the decoder and take
        its extrapolated output; the others run as one batch and refresh their cache.
        """
        lm = self.net.language_model

        def run(rows: list[int], norm: bool) -> Tensor:
            return lm(
                query.expand(len(rows), -1, -1),
                positions[rows],
                routing,
                [branches[b] for b in rows],
                causal=False,
                write=False,
                backend=self.backend,
                frames=None if masks is None else [masks[b] for b in rows],
                norm=norm,
            )

        if caches is None:
            return run(list(range(len(branches))), norm=True)
        full = [b for b in range(len(branches)) if caches[b].full_step()]
        out: dict[int, Tensor] = {}
        if full:
            for b, feature in zip(full, run(full, norm=False), strict=True):
                caches[b].update(feature)
                out[b] = feature
        for b in range(len(branches)):
            if b not in out:
                out[b] = caches[b].predict()
        return lm.final_norm(torch.stack([out[b] for b in range(len(branches))]), routing)

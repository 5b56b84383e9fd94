"""`Bagel`: the module whose state dict is `ema.safetensors`, and its embedding helpers.

Top-level names follow the checkpoint: language_model, vit_model, connector,
vit_pos_embed, vae2llm, llm2vae, time_embedder, latent_pos_embed (spec §1.5).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bagel.config import BagelConfig
from bagel.embeddings import (
    PositionEmbedding,
    TimestepEmbedder,
    grid_position_ids,
    patchify_image,
)
from bagel.llm import MoTLanguageModel
from bagel.vit import Connector, SiglipVisionModel


class Bagel(nn.Module):
    def __init__(self, config: BagelConfig):
        super().__init__()
        llm_dim, vit = config.llm.hidden_size, config.vit
        self.config = config
        self.language_model = MoTLanguageModel(config.llm)
        self.vit_model = SiglipVisionModel(vit)
        self.connector = Connector(vit.hidden_size, llm_dim)
        self.vit_pos_embed = PositionEmbedding(vit.max_patches_per_side, llm_dim)
        self.vae2llm = nn.Linear(config.patch_latent_dim, llm_dim)
        self.llm2vae = nn.Linear(llm_dim, config.patch_latent_dim)
        self.time_embedder = TimestepEmbedder(llm_dim, config.timestep_freq_dim)
        self.latent_pos_embed = PositionEmbedding(config.max_latent_size, llm_dim)

    @property
    def device(self) -> torch.device:
        return self.language_model.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.model.embed_tokens.weight.dtype

    def embed_tokens(self, ids: Tensor) -> Tensor:
        return self.language_model.model.embed_tokens(ids.to(self.device))

    def vit_features(self, pixels: Tensor) -> Tensor:
        """[3, H, W] in [-1, 1] (H, W multiples of the patch) → [N, C_vit] SigLIP features.

        The encoder's output (post-layernorm), before the connector and position table.
        """
        ids = self._vit_position_ids(pixels)
        vit_device = self.vit_model.vision_model.post_layernorm.weight.device
        patches = patchify_image(pixels.to(vit_device, self.dtype), self.config.vit.patch_size)
        return self.vit_model(patches, ids.to(vit_device)).to(self.device)

    def vit_tokens(self, pixels: Tensor) -> Tensor:
        """[3, H, W] in [-1, 1] (H, W multiples of the patch) → [N, C] decoder tokens.

        SigLIP features, connector, plus BAGEL's 2-D sin-cos table (spec §4.4).
        """
        ids = self._vit_position_ids(pixels)
        return self.connector(self.vit_features(pixels)) + self.vit_pos_embed(ids)

    def _vit_position_ids(self, pixels: Tensor) -> Tensor:
        p, side = self.config.vit.patch_size, self.config.vit.max_patches_per_side
        return grid_position_ids(pixels.shape[1] // p, pixels.shape[2] // p, side, self.device)

    def latent_tokens(self, patches: Tensor, t: Tensor, grid: tuple[int, int]) -> Tensor:
        """Latent patches [N, 64] at flow time t ([1] or [N]) on an h×w grid → [N, C].

        vae2llm(x) + time_embedder(t) + latent_pos_embed[r·S + c] (spec §5.4, §7.3).
        """
        ids = grid_position_ids(*grid, self.config.max_latent_size, self.device)
        t_emb = self.time_embedder(t.to(self.device))
        return (
            self.vae2llm(patches.to(self.device, self.dtype)) + t_emb + self.latent_pos_embed(ids)
        )

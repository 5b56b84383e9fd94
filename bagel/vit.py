"""The SigLIP NaViT encoder (vision_model), as BAGEL uses it (spec §4).

Differences from stock SigLIP, all fixed by the official loader: the patch embedding is a
Linear over flattened (py, px, c) patches instead of a Conv2d, position ids follow the
"extrapolate" rule r·S + c on an S×S table, the last layer is dropped, and there is no
pooling head. Each image is encoded on its own (bidirectional within the image).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bagel.config import ViTConfig


class SiglipAttention(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self, name, nn.Linear(cfg.hidden_size, cfg.hidden_size))

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape
        heads = [
            p(x).view(n, self.num_heads, -1).transpose(0, 1)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        ]  # [heads, N, d]
        out = F.scaled_dot_product_attention(*heads)  # scale 1/sqrt(d)
        return self.out_proj(out.transpose(0, 1).reshape(n, c))


class SiglipMLP(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.approximate = "tanh" if cfg.hidden_act == "gelu_pytorch_tanh" else "none"

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEmbeddings(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        patch_dim = cfg.num_channels * cfg.patch_size**2
        self.patch_embedding = nn.Linear(patch_dim, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_patches_per_side**2, cfg.hidden_size)

    def forward(self, patches: Tensor, position_ids: Tensor) -> Tensor:
        return self.patch_embedding(patches) + self.position_embedding(position_ids)


class SiglipEncoder(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class SiglipVisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.embeddings = SiglipEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, patches: Tensor, position_ids: Tensor) -> Tensor:
        """patches [N, 3·p·p] in (py, px, c) order, position_ids [N] → features [N, C]."""
        x = self.embeddings(patches, position_ids)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


class SiglipVisionModel(nn.Module):
    """`vit_model` in the checkpoint."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.vision_model = SiglipVisionTransformer(cfg)

    def forward(self, patches: Tensor, position_ids: Tensor) -> Tensor:
        return self.vision_model(patches, position_ids)


class Connector(nn.Module):
    """ViT features → decoder width: fc1, GELU (tanh), fc2."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))

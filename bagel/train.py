"""Training forwards: the sequence a session builds, run with gradients in one pass.

A training sample is laid out exactly as a session lays out its turns (spec §5–§7): clean
images as VAE tokens (t = 0) then ViT tokens, one RoPE position each; texts framed by
`<|im_start|> … <|im_end|>`, causal; then either a window of noisy frames (each with its
own timestep, frame j at rope + 2j, as in `BagelPipeline.predict_frames`) or a reply
(`<|im_start|>` then the reply tokens, causal, as `generate_text` decodes).

At inference every block runs against the cached blocks before it: it sees all of them,
and itself causally (text) or fully (an image, a noisy frame). A window's frame j sees
the frames before it and itself. Both are one rule over a packed sequence — a row sees
every row of the earlier blocks and, in its own block, the rows its block's kind allows —
so training runs the whole sequence at once through the decoder's own modules with that
mask (torch's SDPA). A test checks that a velocity computed here equals the pipeline's
for the same context, noise and t.

A batch holds B samples whose blocks have the same lengths (the same image size, texts of
the same token count): they share positions, routing and mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bagel.embeddings import patchify_latent
from bagel.forcing import FRAME_ROPE_STRIDE
from bagel.llm import MoTDecoderLayer, Routing, apply_rope, rope_cos_sin
from bagel.model import Bagel
from bagel.tokenizer import BagelTokenizer
from bagel.vae import AutoEncoder


class SequenceBuilder:
    """Collects B aligned training sequences block by block, then runs them at once."""

    def __init__(self, net: Bagel, tokenizer: BagelTokenizer, batch: int):
        self.net, self.tokenizer, self.batch = net, tokenizer, batch
        self.device = net.device  # positions and ids are made there
        self.rope = 0  # the next block's RoPE position
        self.embeds: list[Tensor] = []  # per block [B, n, C]
        self.positions: list[Tensor] = []  # per block [n]
        self.blocks: list[tuple[int, bool]] = []  # (rows, causal) per block
        self.gen_spans: list[tuple[int, int]] = []  # rows of VAE latent tokens
        self.rows = 0

    def _block(self, embeds: Tensor, positions: Tensor, causal: bool, latent: bool) -> int:
        """Append a block; returns its first row."""
        n, start = embeds.shape[1], self.rows
        self.embeds.append(embeds)
        self.positions.append(positions)
        self.blocks.append((n, causal))
        if latent:  # between its two markers
            self.gen_spans.append((start + 1, start + n - 1))
        self.rows += n
        return start

    def _same(self, n: int, position: int) -> Tensor:
        """n rows at one RoPE position (an image's tokens)."""
        return torch.full((n,), position, device=self.device)

    def _wrap(self, tokens: Tensor) -> Tensor:
        """[N, C] → [N+2, C] between <|vision_start|> and <|vision_end|>."""
        tok = self.tokenizer
        start, end = self.net.embed_tokens(
            torch.tensor([tok.start_of_image_id, tok.end_of_image_id], device=self.device)
        )
        return torch.cat([start[None], tokens, end[None]])

    def add_text(self, ids: Tensor) -> None:
        """Framed texts [B, n] (ids as `tokenizer.frame` gives them), causal."""
        n = ids.shape[1]
        positions = self.rope + torch.arange(n, device=self.device)
        self._block(self.net.embed_tokens(ids), positions, True, False)
        self.rope += n

    def add_image(self, latents: Tensor, vit_pixels: Tensor) -> None:
        """Clean images: latents [B, C, h, w] as VAE tokens at t = 0, then ViT tokens from
        vit_pixels [B, 3, H, W] (already resized by the ViT rule), one position each."""
        p = self.net.config.latent_patch_size
        grid = (latents.shape[2] // p, latents.shape[3] // p)
        zero = torch.zeros(1, device=self.device)
        vae = torch.stack(
            [self._wrap(self.net.latent_tokens(patchify_latent(z, p), zero, grid)) for z in latents]
        )  # [B, N+2, C]
        self._block(vae, self._same(vae.shape[1], self.rope), False, True)
        self.rope += 1
        vit = torch.stack([self._wrap(self.net.vit_tokens(px)) for px in vit_pixels])
        self._block(vit, self._same(vit.shape[1], self.rope), False, False)
        self.rope += 1

    def frames_velocity(self, x: Tensor, t: Tensor, grid: tuple[int, int]) -> Tensor:
        """A window of noisy frames after the sequence: x [B, W, N, 64] latent patches at
        times t [B, W] → predicted velocities [B, W, N, 64]."""
        b, w, n, _ = x.shape
        starts = []
        for j in range(w):
            tokens = torch.stack(
                [
                    self._wrap(self.net.latent_tokens(x[i, j], t[i, j].reshape(1), grid))
                    for i in range(b)
                ]
            )  # [B, N+2, C]
            position = self.rope + FRAME_ROPE_STRIDE * j
            starts.append(self._block(tokens, self._same(n + 2, position), False, True))
        hidden = self._forward()
        frames = torch.stack([hidden[:, s + 1 : s + 1 + n] for s in starts], dim=1)
        return self.net.llm2vae(frames)  # [B, W, N, 64]

    def reply_logits(self, ids: Tensor) -> Tensor:
        """A reply after the sequence: inputs [B, n] (`<|im_start|>` then the reply's
        tokens but the last) → logits [B, n, vocab] predicting each next token."""
        n = ids.shape[1]
        positions = self.rope + torch.arange(n, device=self.device)
        start = self._block(self.net.embed_tokens(ids), positions, True, False)
        hidden = self._forward()[:, start:]
        return self.net.language_model.lm_head(hidden).float()

    def mask(self) -> Tensor:
        """[T, T] bool, True where row i may attend to row j: every row of an earlier
        block, and in its own block all rows (image) or rows up to itself (text)."""
        block = torch.cat([torch.full((n,), k) for k, (n, _) in enumerate(self.blocks)])
        causal = torch.cat([torch.full((n,), c) for n, c in self.blocks])
        rows = torch.arange(self.rows)
        earlier = block[None, :] < block[:, None]
        same = block[None, :] == block[:, None]
        allowed_inside = ~causal[:, None] | (rows[None, :] <= rows[:, None])
        return earlier | (same & allowed_inside)

    def _forward(self) -> Tensor:
        """The whole sequence through the decoder → final hidden states [B, T, C]."""
        lm = self.net.language_model
        x = torch.cat(self.embeds, dim=1)
        positions = torch.cat(self.positions)[None].expand(self.batch, -1)
        routing = Routing.latent_spans(self.rows, self.gen_spans, x.device)
        rope = rope_cos_sin(positions, lm.config.head_dim, lm.config.rope_theta, x.dtype)
        mask = self.mask().to(x.device)
        for layer in lm.model.layers:
            x = _layer_forward(layer, x, routing, rope, mask)
        return routing.apply(x, lm.model.norm, lm.model.norm_moe_gen)


def _layer_forward(
    layer: MoTDecoderLayer,
    x: Tensor,
    routing: Routing,
    rope: tuple[Tensor, Tensor],
    mask: Tensor,
) -> Tensor:
    """`MoTDecoderLayer.forward` over a packed sequence with a mask instead of a cache:
    the same modules, routing, QK-norm and RoPE, in the same order."""
    route = routing.apply
    attn = layer.self_attn
    b, t, _ = x.shape
    h = route(x, layer.input_layernorm, layer.input_layernorm_moe_gen)
    q = route(h, attn.q_proj, attn.q_proj_moe_gen).view(b, t, attn.num_heads, -1)
    k = route(h, attn.k_proj, attn.k_proj_moe_gen).view(b, t, attn.num_kv_heads, -1)
    v = route(h, attn.v_proj, attn.v_proj_moe_gen).view(b, t, attn.num_kv_heads, -1)
    q = apply_rope(route(q.float(), attn.q_norm, attn.q_norm_moe_gen).transpose(1, 2), *rope)
    k = apply_rope(route(k.float(), attn.k_norm, attn.k_norm_moe_gen).transpose(1, 2), *rope)
    group = attn.num_heads // attn.num_kv_heads
    k = k.to(x.dtype).repeat_interleave(group, dim=1)  # [B, H, T, D]
    v = v.transpose(1, 2).repeat_interleave(group, dim=1)
    out = F.scaled_dot_product_attention(q.to(x.dtype), k, v, attn_mask=mask)
    x = x + route(out.transpose(1, 2).reshape(b, t, -1), attn.o_proj, attn.o_proj_moe_gen)
    h = route(x, layer.post_attention_layernorm, layer.post_attention_layernorm_moe_gen)
    return x + route(h, layer.mlp, layer.mlp_moe_gen)


def noisy(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """Rectified flow: x_t = (1 − t)·x0 + t·noise (t broadcast from the left); the model's
    target velocity is noise − x0."""
    t = t.reshape(*t.shape, *([1] * (x0.dim() - t.dim())))
    return (1 - t) * x0 + t * noise


def sample_t(shape: tuple[int, ...], shift: float, generator: torch.Generator) -> Tensor:
    """Logit-normal times, shifted as the sampler's schedule is: s·t / (1 + (s − 1)·t)."""
    t = torch.sigmoid(torch.randn(shape, generator=generator))
    return shift * t / (1 + (shift - 1) * t)


def flow_loss(velocity: Tensor, x0: Tensor, noise: Tensor, weight: Tensor | None = None) -> Tensor:
    """MSE of the velocity, optionally weighted per token (weight broadcast from the left
    over velocity's leading dims, normalised to mean 1: the loss's scale stays)."""
    error = (velocity - (noise - x0)).pow(2)
    if weight is None:
        return error.mean()
    weight = weight.reshape(*weight.shape, *([1] * (error.dim() - weight.dim())))
    return (error * weight).mean() / weight.expand_as(error).mean()


def motion_weight(targets: Tensor, before: Tensor, strength: float) -> Tensor:
    """Per target token, 1 + strength · (its squared change from the same token of the
    frame before, over the batch's mean change): the few tokens where a frame differs
    from the last one (a moving ball) weigh more than the many that copy it.
    targets [B, W, N, D], before [B, N, D] → [B, W, N]."""
    change = (targets - before[:, None]).pow(2).sum(-1)
    return 1 + strength * change / change.mean().clamp(min=1e-8)


def reply_loss(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Cross-entropy of the reply tokens (targets [B, n]) where mask [B, n] is True."""
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return (ce * mask.flatten().float()).sum() / mask.float().sum().clamp(min=1)


def autoencoder_loss(
    ae: AutoEncoder, pixels: Tensor, generator: torch.Generator, kl_weight: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Reconstruction (MSE + L1) of pixels [B, 3, H, W] in [−1, 1] through a posterior
    sample, plus a small KL term. Returns (loss, reconstruction MSE)."""
    mean, logvar = ae.encode_moments(pixels)
    eps = torch.randn(mean.shape, generator=generator).to(mean.device)  # drawn on the CPU
    z = mean + torch.exp(0.5 * logvar) * eps
    recon = ae.decoder(z)
    mse = F.mse_loss(recon, pixels)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
    return mse + 0.5 * F.l1_loss(recon, pixels) + kl_weight * kl, mse


def decoder_loss(ae: AutoEncoder, pixels: Tensor, generator: torch.Generator) -> Tensor:
    """The autoencoder's reconstruction loss (MSE + L1) with its encoder frozen: the
    decoder alone learns, so the latents (what a model trained on them sees) stay fixed."""
    with torch.no_grad():
        mean, logvar = ae.encode_moments(pixels)
        eps = torch.randn(mean.shape, generator=generator).to(mean.device)
        z = mean + torch.exp(0.5 * logvar) * eps
    recon = ae.decoder(z)
    return F.mse_loss(recon, pixels) + 0.5 * F.l1_loss(recon, pixels)

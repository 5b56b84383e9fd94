"""Building contexts: new ones, and text and images appended to them.

`prefill` is the one way new rows enter a context (their K/V written, then committed);
`wrap_image` puts an image block between its markers. Both serve the other jobs too:
text generation prefills its reply tokens, image sampling wraps its noisy blocks.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor

from bagel.config import BagelConfig
from bagel.embeddings import patchify_latent
from bagel.image import ResizeRule, open_image, to_tensor
from bagel.inputs import check_latent, check_positions
from bagel.kv import KVContext, KVLayout
from bagel.llm import Routing, layer_device
from bagel.model import Bagel
from bagel.tokenizer import BagelTokenizer
from bagel.vae import AutoEncoder


def kv_layout(net: Bagel) -> KVLayout:
    """The K/V shape of `net`'s decoder: layers, heads, head size, dtype, layer devices."""
    llm = net.config.llm
    return KVLayout(
        llm.num_hidden_layers,
        llm.num_key_value_heads,
        llm.head_dim,
        net.dtype,
        tuple(layer_device(layer) for layer in net.language_model.model.layers),
    )


def prefill(
    net: Bagel,
    backend: str,
    ctx: KVContext,
    embeds: Tensor,
    positions: Tensor,
    routing: Routing,
    *,
    causal: bool,
    rope_advance: int,
) -> Tensor:
    """Run new rows [T, C] against ctx and append their K/V; returns hidden [1, T, C]."""
    with torch.inference_mode():
        ctx.reserve(embeds.shape[0])
        hidden = net.language_model(
            embeds[None],
            positions[None],
            routing,
            [ctx],
            causal=causal,
            write=True,
            backend=backend,
        )
    ctx.commit(rope_advance)
    return hidden


def wrap_image(net: Bagel, tokenizer: BagelTokenizer, tokens: Tensor) -> Tensor:
    """[N, C] → [N+2, C] between <|vision_start|> and <|vision_end|>."""
    markers = net.embed_tokens(
        torch.tensor([tokenizer.start_of_image_id, tokenizer.end_of_image_id])
    )
    return torch.cat([markers[:1], tokens.to(markers.dtype), markers[1:]])


class ContextBuilder:
    """New contexts, and text, token ids, latents and images appended to them.

    Every append checks its input and the position limit before it touches the context.
    """

    def __init__(
        self,
        net: Bagel,
        ae: AutoEncoder,
        tokenizer: BagelTokenizer,
        backend: str,
        layout: KVLayout,
        vae_resize: ResizeRule,
        vit_resize: ResizeRule,
    ):
        self.net, self.ae, self.tokenizer, self.backend = net, ae, tokenizer, backend
        self.layout, self.vae_resize, self.vit_resize = layout, vae_resize, vit_resize

    @property
    def config(self) -> BagelConfig:
        return self.net.config

    def new_context(self) -> KVContext:
        return KVContext(self.layout)

    def append_text(self, ctx: KVContext, text: str) -> int:
        """Append `<|im_start|> text <|im_end|>` (causal, und expert); returns its token count."""
        return self.append_token_ids(ctx, self.tokenizer.frame(text))

    def append_token_ids(self, ctx: KVContext, ids: list[int] | Tensor) -> int:
        """Append token ids as they are, one causal text segment (und expert); returns
        their count."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        n = len(ids)
        check_positions(self.config, ctx, n, f"text of {n} tokens")
        positions = ctx.rope + torch.arange(n)
        prefill(
            self.net,
            self.backend,
            ctx,
            self.net.embed_tokens(ids),
            positions,
            Routing.text(n),
            causal=True,
            rope_advance=n,
        )
        return n

    def prepare_image(self, image: Image.Image | str | bytes) -> Image.Image:
        """Open, convert to RGB and apply the VAE resize rule (every input goes through it,
        also when only ViT tokens are wanted, as in the official inferencer)."""
        return self.vae_resize.resize(open_image(image))

    def image_token_counts(self, width: int, height: int) -> tuple[int, int]:
        """Rows (VAE, ViT) that `append_image` adds for an image of width x height,
        markers included, without encoding it."""
        vae_w, vae_h = self.vae_resize.size_for(width, height)
        vit_w, vit_h = self.vit_resize.size_for(vae_w, vae_h)  # ViT sees the VAE-prepared image
        step, patch = self.config.latent_downsample, self.config.vit.patch_size
        return (vae_h // step) * (vae_w // step) + 2, (vit_h // patch) * (vit_w // patch) + 2

    def encode_latent(
        self,
        image: Image.Image,
        generator: torch.Generator | None = None,
        posterior_mean: bool = False,
    ) -> Tensor:
        """VAE-encode a prepared image → [C, H/8, W/8]; samples the posterior unless
        `posterior_mean`."""
        pixels = to_tensor(image)[None].to(self.ae.device)
        with torch.inference_mode():
            return self.ae.encode(pixels, generator=generator, sample=not posterior_mean)[0].float()

    def append_latent(self, ctx: KVContext, latent: Tensor) -> int:
        """Append a clean latent [C, H/8, W/8] as VAE tokens at t = 0, one RoPE position."""
        c, hh, ww = check_latent(self.config, latent)
        grid = (hh // self.config.latent_patch_size, ww // self.config.latent_patch_size)
        check_positions(self.config, ctx, 1, "an image")
        with torch.inference_mode():
            tokens = self.net.latent_tokens(
                patchify_latent(latent, self.config.latent_patch_size), torch.zeros(1), grid
            )
        n = tokens.shape[0]
        routing = Routing.latent_spans(n + 2, [(1, n + 1)], self.net.device)
        prefill(
            self.net,
            self.backend,
            ctx,
            wrap_image(self.net, self.tokenizer, tokens),
            torch.full((n + 2,), ctx.rope),
            routing,
            causal=False,
            rope_advance=1,
        )
        return n + 2

    def append_vit(self, ctx: KVContext, image: Image.Image) -> int:
        """Append a prepared image as ViT tokens (und expert), one RoPE position."""
        check_positions(self.config, ctx, 1, "an image")
        pixels = to_tensor(self.vit_resize.resize(image))
        with torch.inference_mode():
            tokens = self.net.vit_tokens(pixels)
        n = tokens.shape[0] + 2
        prefill(
            self.net,
            self.backend,
            ctx,
            wrap_image(self.net, self.tokenizer, tokens),
            torch.full((n,), ctx.rope),
            Routing.text(n),
            causal=False,
            rope_advance=1,
        )
        return n

    def append_image(
        self,
        ctx: KVContext,
        image: Image.Image | str | bytes,
        *,
        vae: bool = True,
        vit: bool = True,
        generator: torch.Generator | None = None,
        posterior_mean: bool = False,
    ) -> Image.Image:
        """Append an input image as VAE tokens then ViT tokens (the official order);
        returns the prepared image."""
        prepared = self.prepare_image(image)
        check_positions(self.config, ctx, int(vae) + int(vit), "an image")
        if vae:
            self.append_latent(ctx, self.encode_latent(prepared, generator, posterior_mean))
        if vit:
            self.append_vit(ctx, prepared)
        return prepared

"""Context operations over a loaded BAGEL: append text and images, generate text and images.

`BagelPipeline` holds the weights (`net`: ema.safetensors, `ae`: ae.safetensors), the
tokenizer and the attention backend, and is the public face of the jobs done in their own
modules: building contexts (bagel/contexts.py), generating text (bagel/text_generation.py)
and sampling images (bagel/sampling.py over bagel/velocity.py), with the input checks in
bagel/inputs.py. Contexts (`KVContext`) are plain values the caller keeps; every verb
validates its input before it touches a context, and a context is changed only by the
append verbs (generation works on forks and read-only views) and by `predict_frames`,
which commits each finished frame as an input image.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor

from bagel.attention import check_backend, default_backend
from bagel.contexts import ContextBuilder, kv_layout
from bagel.flow import SamplerParams
from bagel.image import vae_rule, vit_rule
from bagel.inputs import ProgressFn, check_image_size, check_options
from bagel.kv import KVContext
from bagel.llm import Routing
from bagel.model import Bagel
from bagel.sampling import CommitFn, ImageOutput, ImageSampler
from bagel.taylorseer import TaylorCache
from bagel.text_generation import TextGenerator, TextOutput
from bagel.tokenizer import BagelTokenizer
from bagel.vae import AutoEncoder
from bagel.velocity import VelocityModel


class BagelPipeline:
    def __init__(
        self,
        net: Bagel,
        ae: AutoEncoder,
        tokenizer: BagelTokenizer,
        attn_backend: str | None = None,
    ):
        self.net, self.ae, self.tokenizer = net.eval(), ae.eval(), tokenizer
        self.config = net.config
        self.identity: str | None = None  # set by bagel.load: hash of configs + headers
        self.profile: str | None = None  # set by bagel.load: the memory profile
        self.backend = check_backend(attn_backend or default_backend(net.device), net.device)
        self.vae_rule, self.vit_rule = vae_rule(self.config), vit_rule(self.config)
        self.kv_layout = kv_layout(net)
        self._contexts = ContextBuilder(
            net, ae, tokenizer, self.backend, self.kv_layout, self.vae_rule, self.vit_rule
        )
        self._text = TextGenerator(net, tokenizer, self.backend)
        self._velocity = VelocityModel(net, tokenizer, self.backend)
        self._images = ImageSampler(net, ae, self._velocity, self._contexts)

    @property
    def device(self) -> torch.device:
        return self.net.device

    def new_context(self) -> KVContext:
        return self._contexts.new_context()

    # -- appending ----------------------------------------------------------------

    def append_text(self, ctx: KVContext, text: str) -> int:
        """Append `<|im_start|> text <|im_end|>` (causal, und expert). Returns its token count."""
        return self._contexts.append_text(ctx, text)

    def append_token_ids(self, ctx: KVContext, ids: list[int] | Tensor) -> int:
        """Append token ids as they are, one causal text segment (und expert); returns
        their count. `append_text` frames a text and appends it this way."""
        return self._contexts.append_token_ids(ctx, ids)

    def prepare_image(self, image: Image.Image | str | bytes) -> Image.Image:
        """Open, convert to RGB and apply the VAE resize rule (every input goes through it,
        also when only ViT tokens are wanted, as in the official inferencer)."""
        return self._contexts.prepare_image(image)

    def image_token_counts(self, width: int, height: int) -> tuple[int, int]:
        """Rows (VAE, ViT) that `append_image` adds for an image of width x height,
        markers included, without encoding it (for budgets checked before a turn)."""
        return self._contexts.image_token_counts(width, height)

    def encode_latent(
        self,
        image: Image.Image,
        generator: torch.Generator | None = None,
        posterior_mean: bool = False,
    ) -> Tensor:
        """VAE-encode a prepared image → [C, H/8, W/8]; samples the posterior unless
        `posterior_mean` (the official code samples, from the caller's generator)."""
        return self._contexts.encode_latent(image, generator, posterior_mean)

    def append_latent(self, ctx: KVContext, latent: Tensor) -> int:
        """Append a clean latent [C, H/8, W/8] as VAE tokens at t = 0, one RoPE position."""
        return self._contexts.append_latent(ctx, latent)

    def append_vit(self, ctx: KVContext, image: Image.Image) -> int:
        """Append a prepared image as ViT tokens (und expert), one RoPE position."""
        return self._contexts.append_vit(ctx, image)

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
        """Append an input image as VAE tokens then ViT tokens (the official order).

        Returns the prepared (RGB, VAE-resized) image; an edit's output takes its size.
        """
        return self._contexts.append_image(
            ctx, image, vae=vae, vit=vit, generator=generator, posterior_mean=posterior_mean
        )

    # -- generation ---------------------------------------------------------------

    def generate_text(
        self,
        ctx: KVContext,
        max_new_tokens: int = 500,
        do_sample: bool = False,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        output_scores: bool = False,
        progress: ProgressFn | None = None,
    ) -> TextOutput:
        """Decode a reply after the context: feed `<|im_start|>`, stop at `<|im_end|>`.

        Runs on a fork of `ctx`, which is left unchanged (the official code deep-copies
        the context instead). Sampling is plain softmax(logits / temperature): no top-k
        or top-p, as upstream. The official `max_length=L` equals `max_new_tokens=L-1`.
        progress: called with (tokens decoded, max_new_tokens) after every token; an
        exception it raises stops decoding (`ctx` is untouched either way).
        """
        return self._text.generate_text(
            ctx, max_new_tokens, do_sample, temperature, generator, output_scores, progress
        )

    def score_continuations(self, ctx: KVContext, options: list[str]) -> list[float]:
        """Total log-probability of each option as the model's whole reply after `ctx`.

        An option scores log p(BPE(option), `<|im_end|>` | ctx, `<|im_start|>`): the
        reply exactly as `append_text` would frame it, stop token included, so a choice
        by argmax is a reply the model could have produced. Every option runs on its own
        fork of `ctx`, which is left unchanged. Log-softmax over the full logits row,
        padded vocabulary rows included, as `generate_text` decodes them.
        """
        return self._text.score_continuations(ctx, options)

    def check_options(self, options: list[str]) -> list[list[int]]:
        """Validate the answers of a constrained choice; returns each one's token ids
        followed by the stop token."""
        return check_options(self.tokenizer, options)

    def generate_image(
        self,
        ctx: KVContext,
        height: int,
        width: int,
        params: SamplerParams | None = None,
        *,
        cfg_text_ctx: KVContext | None = None,
        cfg_img_ctx: KVContext | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> ImageOutput:
        """Sample an image after `ctx` with the rectified-flow sampler (spec §7).

        Args:
            ctx: the main context; cfg_text_ctx: the text-dropped context (needed when
                cfg_text_scale > 1); cfg_img_ctx: the image-dropped context (needed when
                both scales > 1). None of them is changed.
            height, width: pixels, multiples of 16, at most the latent table allows.
            noise: initial latent [C, H/8, W/8]; otherwise drawn as randn(N, 64) float32
                on the CPU `generator`, in token order, as upstream.
            progress: called after every denoising step; an exception it raises stops
                the sampling (the contexts are untouched).
        """
        return self._images.generate_image(
            ctx,
            height,
            width,
            params,
            cfg_text_ctx=cfg_text_ctx,
            cfg_img_ctx=cfg_img_ctx,
            noise=noise,
            generator=generator,
            progress=progress,
        )

    def predict_frames(
        self,
        ctx: KVContext,
        n_frames: int,
        height: int,
        width: int,
        params: SamplerParams | None = None,
        *,
        window: int = 1,
        schedule: str = "autoregressive",
        cfg_text_ctx: KVContext | None = None,
        cfg_img_ctx: KVContext | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        commit: CommitFn | None = None,
        progress: ProgressFn | None = None,
    ) -> list[ImageOutput]:
        """Predict the next frames after `ctx` with diffusion forcing (see bagel/forcing.py).

        A window of up to `window` frames is denoised in one packed forward, each frame at
        its own timestep; frame j sees the context, the noisy frames before it and itself.
        When the head frame reaches t = 0 it is committed, and a fresh noise frame joins.
        With window 1 every frame equals `generate_image` after the frames before it.

        Args:
            ctx, cfg_text_ctx, cfg_img_ctx, params, height, width, generator: as in
                `generate_image`. In the image-dropped branch the frames do not see each
                other (it holds no images) and all sit at its rope.
            n_frames: frames to make; window: most frames under way at once;
                schedule: "autoregressive" (window 1), "pyramid" or "uniform".
            noise: [n_frames, C, H/8, W/8] initial latents; otherwise each frame's noise is
                drawn from `generator` (as `generate_image` does) when it joins.
            commit: called as commit(frame index, ImageOutput) when a frame is done; it
                appends the frame and returns the contexts (main, text-dropped,
                image-dropped) the remaining frames use. Default: `append_image(ctx,
                frame.image, generator=generator)`; the text-dropped context then follows
                main (a prefix view of it, as after any image) and the image-dropped
                context stays as it is.
            progress: called after every iteration (done, total); an exception it raises
                stops the sampling; frames committed before that stay committed.
        Returns:
            the frames in order.
        """
        return self._images.predict_frames(
            ctx,
            n_frames,
            height,
            width,
            params,
            window=window,
            schedule=schedule,
            cfg_text_ctx=cfg_text_ctx,
            cfg_img_ctx=cfg_img_ctx,
            noise=noise,
            generator=generator,
            commit=commit,
            progress=progress,
        )

    def decode_latent(self, latent: Tensor) -> Image.Image:
        """[C, H/8, W/8] → RGB image (clamp, ×255, truncate)."""
        return self._images.decode_latent(latent)

    def check_image_size(self, height: int, width: int) -> tuple[int, int]:
        """Validate a requested image size; returns the latent grid (H/16, W/16)."""
        return check_image_size(self.config, height, width)

    # -- the denoising forward ----------------------------------------------------

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
        return self._velocity.velocity(x, t, grid, branches, routing, caches)

    def frames_velocity(
        self,
        x: Tensor,
        t: Tensor,
        grid: tuple[int, int],
        branches: list[KVContext],
        see_earlier: list[bool],
        caches: list[TaylorCache] | None = None,
    ) -> Tensor:
        """One packed forward of a window of noisy frames against every branch at once.

        Args:
            x: [W, N, 64] latents; t: [W] their timesteps.
            branches: B contexts; see_earlier: per branch, whether frame j sees frames < j
                (then it sits at the branch's rope + 2j) or none (all frames at its rope).
        Returns:
            [B, W, N, 64] velocities.
        """
        return self._velocity.frames_velocity(x, t, grid, branches, see_earlier, caches)

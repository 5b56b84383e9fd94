"""Context operations over a loaded BAGEL: append text and images, generate text and images.

`BagelPipeline` holds the weights (`net`: ema.safetensors, `ae`: ae.safetensors), the
tokenizer and the attention backend. Contexts (`KVContext`) are plain values the caller
keeps; every verb validates its input before it touches a context, and a context is
changed only by the append verbs (generation works on forks and read-only views) and by
`predict_frames`, which commits each finished frame as an input image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from bagel.attention import FrameMask, check_backend, default_backend
from bagel.embeddings import patchify_latent, unpatchify_latent
from bagel.errors import InputError
from bagel.flow import SamplerParams, cfg_combine, cfg_scales, euler_step, flow_timesteps
from bagel.forcing import check_forcing, forcing_plan
from bagel.image import open_image, to_pil, to_tensor, vae_rule, vit_rule
from bagel.kv import KVContext, KVLayout
from bagel.llm import Routing, layer_device
from bagel.model import Bagel
from bagel.taylorseer import TaylorCache
from bagel.tokenizer import BagelTokenizer
from bagel.vae import AutoEncoder

ProgressFn = Callable[[int, int], None]  # (steps done, steps total); may raise to cancel

# A committed frame takes two positions (its VAE block, then its ViT block), so frame j of
# a window sits at rope + 2j: the position it would get after the frames before it commit.
FRAME_ROPE_STRIDE = 2


@dataclass(frozen=True)
class TextOutput:
    text: str
    token_ids: list[int]  # generated tokens, without the start token and the stop token
    scores: Tensor | None = None  # [steps, vocab] float32 logits, when asked for


@dataclass(frozen=True)
class ImageOutput:
    image: Image.Image
    latent: Tensor  # [C, H/8, W/8] float32, the clean latent (t = 0)


Contexts = tuple[KVContext, KVContext | None, KVContext | None]  # main, text- / image-dropped
CommitFn = Callable[[int, ImageOutput], Contexts]  # (frame index, frame) -> contexts from now


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
        llm = self.config.llm
        layers = net.language_model.model.layers
        self.kv_layout = KVLayout(
            llm.num_hidden_layers,
            llm.num_key_value_heads,
            llm.head_dim,
            net.dtype,
            tuple(layer_device(layer) for layer in layers),
        )

    @property
    def device(self) -> torch.device:
        return self.net.device

    def new_context(self) -> KVContext:
        return KVContext(self.kv_layout)

    # -- appending ----------------------------------------------------------------

    def append_text(self, ctx: KVContext, text: str) -> int:
        """Append `<|im_start|> text <|im_end|>` (causal, und expert). Returns its token count."""
        return self.append_token_ids(ctx, self.tokenizer.frame(text))

    def append_token_ids(self, ctx: KVContext, ids: list[int] | Tensor) -> int:
        """Append token ids as they are, one causal text segment (und expert); returns
        their count. `append_text` frames a text and appends it this way."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        n = len(ids)
        self._check_positions(ctx, n, f"text of {n} tokens")
        positions = ctx.rope + torch.arange(n)
        self._prefill(
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
        return self.vae_rule.resize(open_image(image))

    def image_token_counts(self, width: int, height: int) -> tuple[int, int]:
        """Rows (VAE, ViT) that `append_image` adds for an image of width x height,
        markers included, without encoding it (for budgets checked before a turn)."""
        vae_w, vae_h = self.vae_rule.size_for(width, height)
        vit_w, vit_h = self.vit_rule.size_for(vae_w, vae_h)  # ViT sees the VAE-prepared image
        step, patch = self.config.latent_downsample, self.config.vit.patch_size
        return (vae_h // step) * (vae_w // step) + 2, (vit_h // patch) * (vit_w // patch) + 2

    def encode_latent(
        self,
        image: Image.Image,
        generator: torch.Generator | None = None,
        posterior_mean: bool = False,
    ) -> Tensor:
        """VAE-encode a prepared image → [C, H/8, W/8]; samples the posterior unless
        `posterior_mean` (the official code samples, from the caller's generator)."""
        pixels = to_tensor(image)[None].to(self._ae_device)
        with torch.inference_mode():
            return self.ae.encode(pixels, generator=generator, sample=not posterior_mean)[0].float()

    def append_latent(self, ctx: KVContext, latent: Tensor) -> int:
        """Append a clean latent [C, H/8, W/8] as VAE tokens at t = 0, one RoPE position."""
        c, hh, ww = self._check_latent(latent)
        grid = (hh // self.config.latent_patch_size, ww // self.config.latent_patch_size)
        self._check_positions(ctx, 1, "an image")
        with torch.inference_mode():
            tokens = self.net.latent_tokens(
                patchify_latent(latent, self.config.latent_patch_size), torch.zeros(1), grid
            )
        n = tokens.shape[0]
        routing = Routing.latent_spans(n + 2, [(1, n + 1)], self.device)
        self._prefill(
            ctx,
            self._wrap_image(tokens),
            torch.full((n + 2,), ctx.rope),
            routing,
            causal=False,
            rope_advance=1,
        )
        return n + 2

    def append_vit(self, ctx: KVContext, image: Image.Image) -> int:
        """Append a prepared image as ViT tokens (und expert), one RoPE position."""
        self._check_positions(ctx, 1, "an image")
        pixels = to_tensor(self.vit_rule.resize(image))
        with torch.inference_mode():
            tokens = self.net.vit_tokens(pixels)
        n = tokens.shape[0] + 2
        self._prefill(
            ctx,
            self._wrap_image(tokens),
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
        """Append an input image as VAE tokens then ViT tokens (the official order).

        Returns the prepared (RGB, VAE-resized) image; an edit's output takes its size.
        """
        prepared = self.prepare_image(image)
        self._check_positions(ctx, int(vae) + int(vit), "an image")
        if vae:
            self.append_latent(ctx, self.encode_latent(prepared, generator, posterior_mean))
        if vit:
            self.append_vit(ctx, prepared)
        return prepared

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
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if do_sample and not temperature > 0:
            raise InputError(f"temperature must be > 0 when sampling, got {temperature!r}")
        self._check_positions(ctx, max_new_tokens, f"a reply of up to {max_new_tokens} tokens")
        scratch, token = ctx.fork(), self.tokenizer.bos_id
        out: list[int] = []
        scores: list[Tensor] = []
        lm_head = self.net.language_model.lm_head
        for _ in range(max_new_tokens):
            hidden = self._prefill(
                scratch,
                self.net.embed_tokens(torch.tensor([token])),
                torch.tensor([scratch.rope]),
                Routing.text(1),
                causal=True,
                rope_advance=1,
            )
            with torch.inference_mode():
                logits = lm_head(hidden[0, -1].to(lm_head.weight.device)).float()
            if output_scores:
                scores.append(logits.cpu())
            token = self._next_token(logits, do_sample, temperature, generator)
            if token == self.tokenizer.eos_id:
                break
            out.append(token)
            if progress is not None:
                progress(len(out), max_new_tokens)
        text = self.tokenizer.reply_text([self.tokenizer.bos_id, *out])
        return TextOutput(text, out, torch.stack(scores) if output_scores else None)

    def score_continuations(self, ctx: KVContext, options: list[str]) -> list[float]:
        """Total log-probability of each option as the model's whole reply after `ctx`.

        An option scores log p(BPE(option), `<|im_end|>` | ctx, `<|im_start|>`): the
        reply exactly as `append_text` would frame it, stop token included, so a choice
        by argmax is a reply the model could have produced. Every option runs on its own
        fork of `ctx`, which is left unchanged. Log-softmax over the full logits row,
        padded vocabulary rows included, as `generate_text` decodes them.
        """
        option_ids = self.check_options(options)
        longest = max(len(ids) for ids in option_ids)
        self._check_positions(ctx, longest, f"an answer of {longest} tokens")
        lm_head = self.net.language_model.lm_head
        scores = []
        for ids in option_ids:
            inputs = [self.tokenizer.bos_id, *ids[:-1]]  # token i predicts ids[i]
            n = len(inputs)
            hidden = self._prefill(
                ctx.fork(),
                self.net.embed_tokens(torch.tensor(inputs)),
                ctx.rope + torch.arange(n),
                Routing.text(n),
                causal=True,
                rope_advance=n,
            )
            with torch.inference_mode():
                logits = lm_head(hidden[0].to(lm_head.weight.device)).float()  # [n, vocab]
            logp = torch.log_softmax(logits, dim=-1)
            scores.append(float(logp[torch.arange(n), torch.tensor(ids)].sum()))
        return scores

    def check_options(self, options: list[str]) -> list[list[int]]:
        """Validate the answers of a constrained choice; returns each one's token ids
        followed by the stop token."""
        if isinstance(options, str) or not isinstance(options, list | tuple) or not options:
            raise InputError(f"options must be a non-empty list of strings, got {options!r}")
        for option in options:
            if not isinstance(option, str) or not option.strip():
                raise InputError(f"every option must be a non-empty string, got {option!r}")
        if len(set(options)) != len(options):
            raise InputError(f"options must be distinct, got {list(options)}")
        return [[*self.tokenizer.encode(o), self.tokenizer.eos_id] for o in options]

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
        params = params or SamplerParams()
        h, w = self.check_image_size(height, width)
        self._check_guidance(params, cfg_text_ctx, cfg_img_ctx)
        for c in (ctx, cfg_text_ctx, cfg_img_ctx):
            if c is not None:
                self._check_positions(c, 1, "a generated image")
        x = self._initial_noise(h, w, noise, generator)
        t = flow_timesteps(params.num_timesteps, params.timestep_shift)
        n = h * w
        routing = Routing.latent_spans(n + 2, [(1, n + 1)], self.device)
        contexts = [ctx, cfg_text_ctx, cfg_img_ctx]
        caches = self._feature_caches(params)
        for i in range(params.num_timesteps - 1):
            branches = contexts[: self._branch_count([float(t[i])], params)]
            v = self.velocity(x, t[i], (h, w), branches, routing, caches)
            x = euler_step(x, self._guide(v, float(t[i]), params), (t[i] - t[i + 1]).to(x.device))
            if progress is not None:
                progress(i + 1, params.num_timesteps - 1)
        return self._image_output(x, h, w)

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
        params = params or SamplerParams()
        check_forcing(schedule, window, n_frames)
        if params.feature_cache != "none" and window != 1:
            raise InputError(
                f"feature_cache {params.feature_cache!r} needs window 1: in a window the "
                "frames are at different steps of one shared forward, which the cache's "
                "per-step schedule does not define"
            )
        h, w = self.check_image_size(height, width)
        self._check_guidance(params, cfg_text_ctx, cfg_img_ctx)
        self._check_positions(ctx, FRAME_ROPE_STRIDE * n_frames, f"{n_frames} frames")
        for c in (cfg_text_ctx, cfg_img_ctx):
            if c is not None:
                self._check_positions(c, FRAME_ROPE_STRIDE * min(window, n_frames), "a window")
        noises = self._frame_noises(noise, n_frames, h, w)
        plan = forcing_plan(schedule, n_frames, window, params.num_timesteps)
        commit = commit or self._commit_as_input(ctx, cfg_img_ctx, generator)
        contexts: Contexts = (ctx, cfg_text_ctx, cfg_img_ctx)
        t = flow_timesteps(params.num_timesteps, params.timestep_shift)
        last = params.num_timesteps - 2  # a frame's last step index (it then reaches t = 0)
        x: dict[int, Tensor] = {}  # the latents [N, 64] of the frames under way
        frames_out: list[ImageOutput] = []
        caches = None
        for done, frames in enumerate(plan, 1):
            for f, _ in frames:  # a fresh noise frame joins the tail
                if f not in x:
                    x[f] = (
                        noises[f]
                        if noises is not None
                        else self._initial_noise(h, w, None, generator)
                    )
                    caches = self._feature_caches(params)  # window 1: one frame at a time
            steps = [i for _, i in frames]
            count = self._branch_count([float(t[i]) for i in steps], params)
            v = self.frames_velocity(
                torch.stack([x[f] for f, _ in frames]),
                t[steps],
                (h, w),
                list(contexts[:count]),
                [True, True, False][:count],  # the image-dropped branch holds no images
                caches,
            )  # [B, W, N, 64]
            for j, (f, i) in enumerate(frames):
                v_j = self._guide(v[:, j], float(t[i]), params)
                x[f] = euler_step(x[f], v_j, (t[i] - t[i + 1]).to(x[f].device))
            for f, i in frames:
                if i == last:  # at t = 0: the head frame enters the context
                    frames_out.append(self._image_output(x.pop(f), h, w))
                    contexts = commit(f, frames_out[-1])
            if progress is not None:
                progress(done, len(plan))
        return frames_out

    def decode_latent(self, latent: Tensor) -> Image.Image:
        """[C, H/8, W/8] → RGB image (clamp, ×255, truncate)."""
        with torch.inference_mode():
            pixels = self.ae.decode(latent[None].to(self._ae_device, torch.float32))
        return to_pil(pixels[0].float().cpu())

    # -- internals ----------------------------------------------------------------

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
        """One packed forward of a window of noisy frames against every branch at once.

        Args:
            x: [W, N, 64] latents; t: [W] their timesteps.
            branches: B contexts; see_earlier: per branch, whether frame j sees frames < j
                (then it sits at the branch's rope + 2j) or none (all frames at its rope).
        Returns:
            [B, W, N, 64] velocities.
        """
        frames, rows = x.shape[0], x.shape[1] + 2  # each frame: markers + N latent rows
        spans = [(j * rows + 1, (j + 1) * rows - 1) for j in range(frames)]
        routing = Routing.latent_spans(frames * rows, spans, self.device)
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
                    self._wrap_image(self.net.latent_tokens(xj, tj.reshape(1), grid))
                    for xj, tj in zip(x, t, strict=True)
                ]
            )  # [W·(N+2), C]: per frame <|vision_start|>, N latents, <|vision_end|>
            hidden = self._decode(query, positions, routing, branches, masks, caches)
            hidden = hidden.unflatten(1, (x.shape[0], -1))[:, :, 1:-1]  # [B, W, N, C]
            return self.net.llm2vae(hidden.to(self.device))

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

    @staticmethod
    def _feature_caches(params: SamplerParams) -> list[TaylorCache] | None:
        """One cache per guidance branch (main, text-dropped, image-dropped), or None."""
        if params.feature_cache == "none":
            return None
        return [TaylorCache(params.feature_cache_interval) for _ in range(3)]

    @staticmethod
    def _branch_count(times: list[float], params: SamplerParams) -> int:
        """How many of (main, text-dropped, image-dropped) steps at these times need: the
        image branch matters only under text guidance."""
        scales = [cfg_scales(t, params) for t in times]
        if not any(text > 1 for text, _ in scales):
            return 1
        return 3 if any(text > 1 and img > 1 for text, img in scales) else 2

    @staticmethod
    def _guide(v: Tensor, t: float, params: SamplerParams) -> Tensor:
        """CFG of one frame at time t from its branch velocities v [B, N, 64]."""
        text_scale, img_scale = cfg_scales(t, params)
        return cfg_combine(
            v[0],
            v[1] if len(v) > 1 else None,
            v[2] if len(v) > 2 else None,
            text_scale,
            img_scale,
            params.cfg_renorm_type,
            params.cfg_renorm_min,
        )

    def _image_output(self, x: Tensor, h: int, w: int) -> ImageOutput:
        """Latent tokens [N, 64] at t = 0 → the latent [C, H/8, W/8] and its image."""
        latent = unpatchify_latent(
            x, h, w, self.config.latent_channels, self.config.latent_patch_size
        ).float()
        return ImageOutput(self.decode_latent(latent), latent)

    def _commit_as_input(
        self, ctx: KVContext, cfg_img_ctx: KVContext | None, generator: torch.Generator | None
    ) -> CommitFn:
        """The default commit of predict_frames: the frame re-enters `ctx` as an input image
        (VAE + ViT); the text-dropped context follows main, the image-dropped one stays."""

        def commit(index: int, frame: ImageOutput) -> Contexts:
            self.append_image(ctx, frame.image, generator=generator)
            return ctx, ctx.prefix(ctx.length, ctx.rope), cfg_img_ctx

        return commit

    def _prefill(
        self,
        ctx: KVContext,
        embeds: Tensor,
        positions: Tensor,
        routing: Routing,
        causal: bool,
        rope_advance: int,
    ) -> Tensor:
        """Run new rows [T, C] against ctx and append their K/V; returns hidden [1, T, C]."""
        with torch.inference_mode():
            ctx.reserve(embeds.shape[0])
            hidden = self.net.language_model(
                embeds[None],
                positions[None],
                routing,
                [ctx],
                causal=causal,
                write=True,
                backend=self.backend,
            )
        ctx.commit(rope_advance)
        return hidden

    def _wrap_image(self, tokens: Tensor) -> Tensor:
        """[N, C] → [N+2, C] between <|vision_start|> and <|vision_end|>."""
        markers = self.net.embed_tokens(
            torch.tensor([self.tokenizer.start_of_image_id, self.tokenizer.end_of_image_id])
        )
        return torch.cat([markers[:1], tokens.to(markers.dtype), markers[1:]])

    def _next_token(
        self, logits: Tensor, do_sample: bool, temperature: float, generator: torch.Generator | None
    ) -> int:
        if not do_sample:
            return int(logits.argmax())
        probs = torch.softmax(logits / temperature, dim=-1)
        if generator is not None:
            probs = probs.to(generator.device)
        return int(torch.multinomial(probs, 1, generator=generator))

    def _check_guidance(
        self,
        params: SamplerParams,
        cfg_text_ctx: KVContext | None,
        cfg_img_ctx: KVContext | None,
    ) -> None:
        if params.cfg_text_scale > 1 and cfg_text_ctx is None:
            raise InputError("cfg_text_scale > 1 needs cfg_text_ctx (the text-dropped context)")
        if params.cfg_text_scale > 1 and params.cfg_img_scale > 1 and cfg_img_ctx is None:
            raise InputError("cfg_img_scale > 1 needs cfg_img_ctx (the image-dropped context)")

    def _frame_noises(
        self, noise: Tensor | None, n_frames: int, h: int, w: int
    ) -> list[Tensor] | None:
        """Validate and patchify the given per-frame noise [n_frames, C, H/8, W/8]."""
        if noise is None:
            return None
        if not isinstance(noise, Tensor) or noise.dim() != 4 or noise.shape[0] != n_frames:
            shape = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
            raise InputError(
                f"noise must be a tensor of shape ({n_frames}, C, H/8, W/8), one latent per "
                f"frame, got {shape}"
            )
        return [self._initial_noise(h, w, n, None) for n in noise]

    def _initial_noise(
        self, h: int, w: int, noise: Tensor | None, generator: torch.Generator | None
    ) -> Tensor:
        dim = self.config.patch_latent_dim
        if noise is None:
            x = torch.randn(h * w, dim, generator=generator, dtype=torch.float32)
        else:
            c, hh, ww = self._check_latent(noise, "noise")
            if (hh, ww) != (h * self.config.latent_patch_size, w * self.config.latent_patch_size):
                raise InputError(
                    f"noise has latent size {hh}x{ww}; the requested image needs "
                    f"{h * self.config.latent_patch_size}x"
                    f"{w * self.config.latent_patch_size}"
                )
            x = patchify_latent(noise.float(), self.config.latent_patch_size)
        return x.to(self.device)

    def _check_latent(self, latent: Tensor, name: str = "latent") -> tuple[int, int, int]:
        p, c = self.config.latent_patch_size, self.config.latent_channels
        if not isinstance(latent, Tensor) or latent.dim() != 3 or latent.shape[0] != c:
            shape = tuple(latent.shape) if isinstance(latent, Tensor) else type(latent).__name__
            raise InputError(f"{name} must be a tensor of shape ({c}, H/8, W/8), got {shape}")
        _, hh, ww = latent.shape
        if hh % p or ww % p or hh == 0 or ww == 0:
            raise InputError(f"{name} spatial size {hh}x{ww} must be a positive multiple of {p}")
        if max(hh, ww) // p > self.config.max_latent_size:
            raise InputError(
                f"{name} spatial size {hh}x{ww} exceeds the latent position table "
                f"({self.config.max_latent_size * p} per side)"
            )
        if not torch.isfinite(latent).all():
            raise InputError(f"{name} contains NaN or infinite values")
        return c, hh, ww

    def check_image_size(self, height: int, width: int) -> tuple[int, int]:
        """Validate a requested image size; returns the latent grid (H/16, W/16)."""
        step, top = self.config.latent_downsample, self.config.vae_max_side
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise InputError(f"{name} must be an integer, got {value!r}")
            if value < step or value > top or value % step:
                raise InputError(
                    f"{name} {value} must be a multiple of {step} between {step} and {top}"
                )
        return height // step, width // step

    def _check_positions(self, ctx: KVContext, advance: int, what: str) -> None:
        limit = self.config.llm.max_position_embeddings
        if ctx.rope + advance > limit:
            raise InputError(
                f"{what} does not fit: the context is at position {ctx.rope} and "
                f"the model's position limit is {limit}"
            )

    @property
    def _ae_device(self) -> torch.device:
        return next(self.ae.parameters()).device

"""Image sampling: the rectified-flow sampler with guidance (spec §7), one image or a
diffusion-forcing window of frames (bagel/forcing.py).

Noise is drawn as randn(N, 64) float32 on the CPU generator, in token order, as upstream.
`generate_image` changes no context; `predict_frames` commits each finished frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from bagel.config import BagelConfig
from bagel.contexts import ContextBuilder
from bagel.embeddings import patchify_latent, unpatchify_latent
from bagel.errors import InputError
from bagel.flow import SamplerParams, cfg_combine, cfg_scales, euler_step, flow_timesteps
from bagel.forcing import FRAME_ROPE_STRIDE, check_forcing, forcing_plan
from bagel.image import to_pil
from bagel.inputs import ProgressFn, check_guidance, check_image_size, check_latent, check_positions
from bagel.kv import KVContext
from bagel.llm import Routing
from bagel.model import Bagel
from bagel.vae import AutoEncoder
from bagel.velocity import VelocityModel, feature_caches


@dataclass(frozen=True)
class ImageOutput:
    image: Image.Image
    latent: Tensor  # [C, H/8, W/8] float32, the clean latent (t = 0)


Contexts = tuple[KVContext, KVContext | None, KVContext | None]  # main, text- / image-dropped
CommitFn = Callable[[int, ImageOutput], Contexts]  # (frame index, frame) -> contexts from now


def branch_count(times: list[float], params: SamplerParams) -> int:
    """How many of (main, text-dropped, image-dropped) steps at these times need: the
    image branch matters only under text guidance."""
    scales = [cfg_scales(t, params) for t in times]
    if not any(text > 1 for text, _ in scales):
        return 1
    return 3 if any(text > 1 and img > 1 for text, img in scales) else 2


def guide(v: Tensor, t: float, params: SamplerParams) -> Tensor:
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


def initial_noise(
    config: BagelConfig,
    device: torch.device,
    h: int,
    w: int,
    noise: Tensor | None,
    generator: torch.Generator | None,
) -> Tensor:
    """The starting tokens [h·w, 64] on `device`: the given latent noise patchified, or
    randn drawn from `generator`."""
    if noise is None:
        x = torch.randn(h * w, config.patch_latent_dim, generator=generator, dtype=torch.float32)
    else:
        c, hh, ww = check_latent(config, noise, "noise")
        p = config.latent_patch_size
        if (hh, ww) != (h * p, w * p):
            raise InputError(
                f"noise has latent size {hh}x{ww}; the requested image needs {h * p}x{w * p}"
            )
        x = patchify_latent(noise.float(), p)
    return x.to(device)


def frame_noises(
    config: BagelConfig, device: torch.device, noise: Tensor | None, n_frames: int, h: int, w: int
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
    return [initial_noise(config, device, h, w, n, None) for n in noise]


class ImageSampler:
    """Images after a context, and future frames committed into it."""

    def __init__(
        self, net: Bagel, ae: AutoEncoder, velocity: VelocityModel, contexts: ContextBuilder
    ):
        self.net, self.ae, self.velocity, self.contexts = net, ae, velocity, contexts

    @property
    def config(self) -> BagelConfig:
        return self.net.config

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
        """Sample an image after `ctx` (see `BagelPipeline.generate_image`)."""
        params = params or SamplerParams()
        h, w = check_image_size(self.config, height, width)
        check_guidance(params, cfg_text_ctx, cfg_img_ctx)
        for c in (ctx, cfg_text_ctx, cfg_img_ctx):
            if c is not None:
                check_positions(self.config, c, 1, "a generated image")
        x = initial_noise(self.config, self.net.device, h, w, noise, generator)
        t = flow_timesteps(params.num_timesteps, params.timestep_shift)
        n = h * w
        routing = Routing.latent_spans(n + 2, [(1, n + 1)], self.net.device)
        contexts = [ctx, cfg_text_ctx, cfg_img_ctx]
        caches = feature_caches(params)
        for i in range(params.num_timesteps - 1):
            branches = contexts[: branch_count([float(t[i])], params)]
            v = self.velocity.velocity(x, t[i], (h, w), branches, routing, caches)
            x = euler_step(x, guide(v, float(t[i]), params), (t[i] - t[i + 1]).to(x.device))
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
        """The next frames after `ctx` by diffusion forcing (see
        `BagelPipeline.predict_frames`)."""
        params = params or SamplerParams()
        check_forcing(schedule, window, n_frames)
        if params.feature_cache != "none" and window != 1:
            raise InputError(
                f"feature_cache {params.feature_cache!r} needs window 1: in a window the "
                "frames are at different steps of one shared forward, which the cache's "
                "per-step schedule does not define"
            )
        h, w = check_image_size(self.config, height, width)
        check_guidance(params, cfg_text_ctx, cfg_img_ctx)
        check_positions(self.config, ctx, FRAME_ROPE_STRIDE * n_frames, f"{n_frames} frames")
        for c in (cfg_text_ctx, cfg_img_ctx):
            if c is not None:
                check_positions(
                    self.config, c, FRAME_ROPE_STRIDE * min(window, n_frames), "a window"
                )
        noises = frame_noises(self.config, self.net.device, noise, n_frames, h, w)
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
                        else initial_noise(self.config, self.net.device, h, w, None, generator)
                    )
                    caches = feature_caches(params)  # window 1: one frame at a time
            steps = [i for _, i in frames]
            count = branch_count([float(t[i]) for i in steps], params)
            v = self.velocity.frames_velocity(
                torch.stack([x[f] for f, _ in frames]),
                t[steps],
                (h, w),
                list(contexts[:count]),
                [True, True, False][:count],  # the image-dropped branch holds no images
                caches,
            )  # [B, W, N, 64]
            for j, (f, i) in enumerate(frames):
                v_j = guide(v[:, j], float(t[i]), params)
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
            pixels = self.ae.decode(latent[None].to(self.ae.device, torch.float32))
        return to_pil(pixels[0].float().cpu())

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
            self.contexts.append_image(ctx, frame.image, generator=generator)
            return ctx, ctx.prefix(ctx.length, ctx.rope), cfg_img_ctx

        return commit

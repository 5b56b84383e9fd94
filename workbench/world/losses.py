"""The training losses of one batch of samples, each laid out as its chain lays out a
session: clean earlier frames as VAE + ViT tokens with the chain's texts between them,
then the frames to denoise (flow matching) or the reply to score (cross-entropy)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from bagel.embeddings import patchify_latent
from bagel.image import to_tensor
from bagel.pipeline import BagelPipeline
from bagel.train import SequenceBuilder, flow_loss, motion_weight, noisy, reply_loss, sample_t
from workbench.world.data import Episode


class SampleLosses:
    """Losses of rendered episodes on the pipeline's decoder; tensors go to `device`
    (random draws stay on the CPU generator they come from)."""

    def __init__(
        self,
        pipe: BagelPipeline,
        device: torch.device,
        timestep_shift: float,
        context_noise: float = 0.0,
    ):
        self.pipe, self.device, self.timestep_shift = pipe, device, timestep_shift
        self.context_noise = context_noise

    def _encode(self, episodes: list[Episode], gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Latents [B, K, C, h, w] (posterior samples, as a session takes them) and ViT
        pixels [B, K, 3, H', W'] of every frame."""
        images = [[Image.fromarray(f) for f in e.frames] for e in episodes]
        pixels = torch.stack([torch.stack([to_tensor(im) for im in row]) for row in images])
        pixels = pixels.to(self.device)
        with torch.no_grad():
            latents = self.pipe.ae.encode(pixels.flatten(0, 1), generator=gen)
        rule = self.pipe.vit_rule
        vit = torch.stack(
            [torch.stack([to_tensor(rule.resize(im)) for im in row]) for row in images]
        ).to(self.device)
        return latents.unflatten(0, pixels.shape[:2]), vit

    def pixels(self, frames: np.ndarray) -> Tensor:
        """uint8 frames [n, H, W, 3] as the autoencoder's pixels [n, 3, H, W], on the device."""
        return torch.stack([to_tensor(Image.fromarray(f)) for f in frames]).to(self.device)

    def _text(self, text: str, rows: int) -> Tensor:
        return torch.tensor([self.pipe.tokenizer.frame(text)] * rows, device=self.device)

    def flow(
        self, episodes: list[Episode], window: int, gen: torch.Generator, motion: float = 0.0
    ) -> Tensor:
        """Flow-matching loss of the last `window` frames after the earlier ones (with the
        episodes' texts between them, as the chains add them); `motion` > 0 weighs each
        target token by its change from the last context frame (`motion_weight`). With
        `context_noise` > 0 each context frame's latent is noised to its own level drawn
        in [0, context_noise] (still entered as a clean frame, at t = 0, as inference
        enters its generated frames), so the model learns to continue from imperfect
        frames."""
        latents, vit = self._encode(episodes, gen)
        b, k = latents.shape[:2]
        first_target = k - window
        p = self.pipe.config.latent_patch_size
        grid = (latents.shape[3] // p, latents.shape[4] // p)
        x0 = torch.stack(
            [torch.stack([patchify_latent(z, p) for z in row[first_target:]]) for row in latents]
        )  # [B, W, N, 64]
        noise = torch.randn(x0.shape, generator=gen).to(self.device)
        t = sample_t((b, window), self.timestep_shift, gen).to(self.device)
        context = latents[:, :first_target]
        if self.context_noise > 0 and first_target > 0:
            levels = torch.rand((b, first_target), generator=gen) * self.context_noise
            drawn = torch.randn(context.shape, generator=gen)
            context = noisy(context, drawn.to(self.device), levels.to(self.device))
        seq = SequenceBuilder(self.pipe.net, self.pipe.tokenizer, b)
        for i in range(first_target):
            if episodes[0].texts[i] is not None:
                seq.add_text(self._text(episodes[0].texts[i], b))
            seq.add_image(context[:, i], vit[:, i])
        if episodes[0].texts[first_target] is not None:  # one text before a window
            seq.add_text(self._text(episodes[0].texts[first_target], b))
        weight = None
        if motion > 0 and first_target > 0:
            before = torch.stack([patchify_latent(z, p) for z in latents[:, first_target - 1]])
            weight = motion_weight(x0, before, motion)
        velocity = seq.frames_velocity(noisy(x0, noise, t), t, grid)
        return flow_loss(velocity, x0, noise, weight)

    def reply(
        self, episodes: list[Episode], question: str, replies: list[str], gen: torch.Generator
    ) -> Tensor:
        """Cross-entropy of each reply to `question` asked after its episode's view."""
        latents, vit = self._encode(episodes, gen)
        b = len(episodes)
        seq = SequenceBuilder(self.pipe.net, self.pipe.tokenizer, b)
        seq.add_image(latents[:, 0], vit[:, 0])
        seq.add_text(self._text(question, b))
        tok = self.pipe.tokenizer
        ids = [[*tok.encode(r), tok.eos_id] for r in replies]
        n = max(len(r) for r in ids)
        targets = torch.tensor([r + [tok.eos_id] * (n - len(r)) for r in ids])
        mask = torch.tensor([[i < len(r) for i in range(n)] for r in ids])
        inputs = torch.cat([torch.full((b, 1), tok.bos_id), targets[:, :-1]], dim=1)
        targets, mask, inputs = (x.to(self.device) for x in (targets, mask, inputs))
        return reply_loss(seq.reply_logits(inputs), targets, mask)

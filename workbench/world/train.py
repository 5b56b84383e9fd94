"""Train the world model from scratch on the rendered world: `workbench train-world OUT`.

Two phases, in one seeded, resumable run:

1. the autoencoder (the FLUX layout, sized down through ae_config.json) on rendered
   frames; at its end the latent shift and scale are set from the data (mean and
   1 / std of the posterior means), as the release's factors are;
2. the decoder, with the autoencoder's encoder frozen: flow matching of the generation expert on
   navigation / turntable next frames and on windows of future frames (each frame its
   own noise level: diffusion forcing), plus caption cross-entropy on the understanding
   expert — each sample laid out as its chain lays out a session (bagel/train.py).
   Every `ae_decoder_every`-th step also trains the autoencoder's decoder alone (the
   encoder frozen, so the latents the model learns stay what they were): the pixels
   of every frame improve without retraining the model.

OUT is a checkpoint folder in the official layout at every save (llm_config.json,
vit_config.json, ae_config.json, bagel_config.json, the tokenizer files, ema.safetensors
with the exponential moving average of the weights, ae.safetensors), so `bagel.load(OUT)`
loads it; OUT/train/ holds what resuming needs (raw weights, optimizer state as
safetensors, state.json) and log.jsonl, the losses.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor
from tqdm import tqdm

from bagel.checkpoint import AE_WEIGHTS, EMA_WEIGHTS, load
from bagel.errors import InputError
from bagel.pipeline import BagelPipeline
from bagel.tiny import make_tiny
from bagel.train import autoencoder_loss, decoder_loss
from workbench.chains import CAPTION_QUESTION
from workbench.files import write_atomic
from workbench.world.batches import Prefetch, model_batch, views_batch
from workbench.world.data import navigation
from workbench.world.losses import SampleLosses
from workbench.world.model import write_marker
from workbench.world.train_files import load_optimizer, optimizer_tensors, save_tensors, trim_log
from workbench.world.train_options import TrainOptions, use_autoencoder, world_config

TRAIN_DIR = "train"
LOG = "log.jsonl"
DECODER_OPTIMIZER = "ae_decoder_optimizer.safetensors"


class WorldTrainer:
    """The model, its optimizer and EMA, the phase and step, and OUT's files."""

    def __init__(self, out: Path, options: TrainOptions, resume: bool):
        self.out, self.options = Path(out), options
        self.train_dir = self.out / TRAIN_DIR
        state_file = self.train_dir / "state.json"
        if resume and state_file.exists():
            self.state = json.loads(state_file.read_text())
            trim_log(self.train_dir / LOG, self.state)
        else:
            if (self.out / EMA_WEIGHTS).exists() and not resume:
                raise InputError(f"{self.out} already holds a checkpoint; use --resume")
            config = world_config(options.hidden, options.latent_patch_size)
            make_tiny(self.out, options.seed, config)
            self.state = {"ae_step": 0, "step": 0, "seconds": 0.0, "seed": options.seed}
            if options.autoencoder is not None:  # trained before: straight to the decoder
                use_autoencoder(self.out, options.autoencoder, config)
                self.state["latent_scale_set"] = True
        self.train_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(options.device)  # random draws stay on the CPU
        self.pipe: BagelPipeline = load(self.out, device=options.device, dtype="float32")
        self.net, self.ae = self.pipe.net, self.pipe.ae
        if self.state["ae_step"] == 0 and not self.state.get("latent_scale_set"):
            _narrow_posterior(self.ae)
        raw = self.train_dir / "model.safetensors"
        if resume and raw.exists():
            self.net.load_state_dict(load_file(raw))
        self.ema = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        if resume and (self.out / EMA_WEIGHTS).exists() and raw.exists():
            self.ema = load_file(self.out / EMA_WEIGHTS, device=str(self.device))
        for name, p in self.net.named_parameters():
            p.requires_grad_(not name.endswith("pos_embed"))  # the sin-cos tables stay fixed
        self.optimizer = self._optimizer()
        self.decoder_optimizer = self._decoder_optimizer()
        self.prefetch = Prefetch(options.render_workers)
        self.losses = SampleLosses(
            self.pipe, self.device, options.timestep_shift, options.context_noise
        )

    @property
    def in_ae_phase(self) -> bool:
        """Until ae_steps are done; never again once the latent scale is set (the decoder
        learns the latents of the autoencoder as it was then)."""
        done = self.state.get("latent_scale_set", False)
        return not done and self.state["ae_step"] < self.options.ae_steps

    def _optimizer(self) -> torch.optim.Optimizer:
        if self.in_ae_phase:
            self.ae.train().requires_grad_(True)
            params, lr = list(self.ae.parameters()), self.options.ae_lr
        else:
            self.ae.eval().requires_grad_(False)
            self.net.train()
            params = [p for p in self.net.parameters() if p.requires_grad]
            lr = self.options.lr
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        saved = self.train_dir / "optimizer.safetensors"
        if saved.exists() and self.state.get("optimizer_phase") == self._phase:
            load_optimizer(optimizer, load_file(saved), self.state["optimizer_groups"])
            for group in optimizer.param_groups:  # this run's learning rate wins
                group["lr"] = lr
        return optimizer

    def _decoder_optimizer(self) -> torch.optim.Optimizer | None:
        """Phase 2's optimizer of the autoencoder's decoder (None in phase 1 or when off)."""
        if self.in_ae_phase or not self.options.ae_decoder_every:
            return None
        params = list(self.ae.decoder.parameters())
        optimizer = torch.optim.AdamW(params, lr=self.options.ae_lr, weight_decay=0.0)
        saved = self.train_dir / DECODER_OPTIMIZER
        if saved.exists() and "decoder_optimizer_groups" in self.state:
            load_optimizer(optimizer, load_file(saved), self.state["decoder_optimizer_groups"])
            for group in optimizer.param_groups:
                group["lr"] = self.options.ae_lr
        return optimizer

    @property
    def _phase(self) -> str:
        return "ae" if self.in_ae_phase else "model"

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> dict:
        opts = self.options
        total = opts.ae_steps + opts.steps
        done = self.state["ae_step"] + self.state["step"]
        started = last_save = time.monotonic()
        base_seconds = self.state["seconds"]
        bar = tqdm(total=total, initial=done, desc="train-world", unit="step")
        try:
            while self.in_ae_phase or self.state["step"] < opts.steps:
                self._end_ae_phase()
                losses = self.ae_step() if self.in_ae_phase else self.model_step()
                bar.update(1)
                bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()})
                now = time.monotonic()
                self.state["seconds"] = base_seconds + now - started
                self._log(losses)
                if now - last_save > 60 * opts.save_minutes:
                    self.save()
                    last_save = now
                if opts.max_minutes is not None and now - started > 60 * opts.max_minutes:
                    break
        finally:
            self.prefetch.close()
        bar.close()
        self._end_ae_phase()
        self.save()
        return self.state

    def _end_ae_phase(self) -> None:
        """Once the autoencoder's steps are done (or fewer asked for on a resume): set the
        latent scale, switch the optimizer to the decoder, save."""
        if self.state["ae_step"] >= self.options.ae_steps and not self.state.get(
            "latent_scale_set"
        ):
            self._set_latent_scale()
            self.optimizer = self._optimizer()
            self.decoder_optimizer = self._decoder_optimizer()
            self.save()

    def _key(self, ahead: int = 0, own: bool = False) -> tuple[int, ...]:
        """The key of the batch `ahead` steps on (of this phase): the first run's seed and
        the step, so a resumed run draws the batches an uninterrupted one would; `own`:
        the autoencoder-decoder's own draw of a decoder step."""
        s = self.state
        if self.in_ae_phase:
            return (s["seed"], s["ae_step"] + ahead, s["step"])
        return (s["seed"], s["ae_step"], s["step"] + ahead, *((1,) if own else ()))

    def _upcoming(self, own: bool = False) -> list[tuple[int, ...]]:
        """The keys of the next steps' batches (for the render workers)."""
        depth = 2 * self.options.render_workers
        every = self.options.ae_decoder_every
        if not own:
            return [self._key(i) for i in range(1, depth + 1)]
        ahead = [i for i in range(1, depth * every + 1) if (self.state["step"] + i) % every == 0]
        return [self._key(i, own=True) for i in ahead]

    def ae_step(self) -> dict[str, float]:
        views = self.prefetch.get(views_batch, self._key(), self.options.batch, self._upcoming())
        gen = torch.Generator().manual_seed(views.gen_seed)
        loss, mse = autoencoder_loss(self.ae, self.losses.pixels(views.frames), gen)
        self._apply(loss, self.ae.parameters())
        self.state["ae_step"] += 1
        return {
            "ae_loss": float(loss.detach()),
            "ae_psnr": float(10 * torch.log10(4 / mse.detach())),
        }

    def model_step(self) -> dict[str, float]:
        b = self.options.batch
        data = self.prefetch.get(model_batch, self._key(), b, self._upcoming())
        gen = torch.Generator().manual_seed(data.gen_seed)
        losses = self.losses
        nav = losses.flow(data.navigation, 1, gen)
        fut = losses.flow(data.future, data.window, gen, self.options.motion_weight)
        cap = losses.reply(
            data.captions, CAPTION_QUESTION, [e.captions[0] for e in data.captions], gen
        )
        agent = losses.reply(data.agent, data.agent_question, data.agent_answers, gen)
        loss = nav + fut + 0.2 * cap + 0.2 * agent
        self._apply(loss, [p for p in self.net.parameters() if p.requires_grad])
        self._update_ema()
        parts = {"nav": nav, "future": fut, "caption": cap, "agent": agent}
        every = self.options.ae_decoder_every
        if every and self.state["step"] % every == 0:
            parts["ae_decoder"] = self.decoder_step()
        self.state["step"] += 1
        return {k: float(v.detach()) for k, v in parts.items()}

    def decoder_step(self) -> Tensor:
        """One step of the autoencoder's decoder alone, on 2 × batch views (its own draw)."""
        n = 2 * self.options.batch
        views = self.prefetch.get(views_batch, self._key(own=True), n, self._upcoming(own=True))
        gen = torch.Generator().manual_seed(views.gen_seed)
        self.ae.decoder.train().requires_grad_(True)
        loss = decoder_loss(self.ae, self.losses.pixels(views.frames), gen)
        self._apply(loss, self.ae.decoder.parameters(), self.decoder_optimizer)
        self.ae.decoder.eval().requires_grad_(False)
        return loss

    def _apply(self, loss: Tensor, params, optimizer: torch.optim.Optimizer | None = None) -> None:
        optimizer = optimizer or self.optimizer
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params), 1.0)
        optimizer.step()

    # -- state ----------------------------------------------------------------------------

    def _update_ema(self) -> None:
        decay = min(self.options.ema, (1 + self.state["step"]) / (10 + self.state["step"]))
        with torch.no_grad():
            for name, value in self.net.state_dict().items():
                self.ema[name].mul_(decay).add_(value.detach(), alpha=1 - decay)

    def _set_latent_scale(self) -> None:
        """shift = mean, scale = 1 / std of the posterior means over 64 held-back frames."""
        rng = np.random.default_rng([self.options.seed, 10**6])
        episodes = [navigation(rng, ["turn_left"]) for _ in range(32)]
        pixels = self.losses.pixels(np.stack([f for e in episodes for f in e.frames]))
        with torch.no_grad():
            mean, _ = self.ae.encode_moments(pixels)
        ae_config = dataclasses.replace(
            self.ae.config,
            shift_factor=float(mean.mean()),
            scale_factor=float(1 / mean.std()),
        )
        config = dataclasses.replace(self.pipe.config, ae=ae_config)
        self.ae.config = ae_config
        self.net.config = self.pipe.config = config
        self.state["latent_scale_set"] = True

    def save(self) -> None:
        """The official layout in OUT (EMA weights), then the resume state in OUT/train."""
        self.pipe.config.to_files(self.out)
        save_tensors(self.ema, self.out / EMA_WEIGHTS)
        save_tensors(self.ae.state_dict(), self.out / AE_WEIGHTS)
        write_marker(self.out)
        save_tensors(self.net.state_dict(), self.train_dir / "model.safetensors")
        tensors, groups = optimizer_tensors(self.optimizer)
        save_tensors(tensors, self.train_dir / "optimizer.safetensors")
        self.state.update(optimizer_phase=self._phase, optimizer_groups=groups)
        if self.decoder_optimizer is not None:
            tensors, groups = optimizer_tensors(self.decoder_optimizer)
            save_tensors(tensors, self.train_dir / DECODER_OPTIMIZER)
            self.state["decoder_optimizer_groups"] = groups
        self.state["options"] = dataclasses.asdict(self.options)
        text = json.dumps(self.state, indent=2) + "\n"
        write_atomic(self.train_dir / "state.json", lambda tmp: tmp.write_text(text))

    def _log(self, losses: dict[str, float]) -> None:
        record = {
            "ae_step": self.state["ae_step"],
            "step": self.state["step"],
            "seconds": round(self.state["seconds"], 1),
            **{k: round(v, 5) for k, v in losses.items()},
        }
        with open(self.train_dir / LOG, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _narrow_posterior(ae) -> None:
    """Start the encoder's log-variance near −10 (std ≈ 0.007): a random init gives std ≈ 1,
    whose sampling noise drowns the latent and stalls the reconstruction for a long time;
    the small KL weight would barely move it. Sessions sample the posterior, so a narrow
    one keeps their latents close to the mean."""
    conv = ae.encoder.conv_out
    z = conv.out_channels // 2
    with torch.no_grad():
        conv.weight[z:].mul_(0.1)
        conv.bias[z:].fill_(-10.0)


def command(args) -> int:
    """`workbench train-world`: the CLI's arguments to a run; prints the final state."""
    if args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)  # one thread is fastest for these small tensors
    options = TrainOptions(
        steps=args.steps,
        ae_steps=args.ae_steps,
        batch=args.batch,
        seed=args.seed,
        lr=args.lr,
        ae_lr=args.ae_lr,
        ae_decoder_every=args.ae_decoder_every,
        max_minutes=args.minutes,
        render_workers=args.render_workers,
        device=args.device,
        motion_weight=args.motion_weight,
        hidden=args.hidden,
        latent_patch_size=args.latent_patch_size,
        context_noise=args.context_noise,
        autoencoder=args.autoencoder,
    )
    state = train_world(args.out, options, resume=args.resume)
    print(
        f"{args.out}: autoencoder step {state['ae_step']}, decoder step {state['step']}, "
        f"{state['seconds'] / 60:.1f} min of training"
    )
    return 0


def train_world(out: Path, options: TrainOptions, resume: bool = False) -> dict:
    """Train (or resume training) the world model into `out`; returns the final state."""
    return WorldTrainer(out, options, resume).run()

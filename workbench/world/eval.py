"""Ground-truth evaluation of the world-modeling chains: `workbench eval-world`.

Every rollout runs through a persistent `Session` with the chains a user would run
(navigate, predict), starting from a rendered frame, and is compared frame by frame with
the renderer's truth (PSNR, SSIM; workbench/metrics.py). Worlds are drawn from their own
seed stream (EVAL_STREAM), so their camera poses and balls are not the training ones;
the levels are the training levels (TRAIN_LEVELS), plus one level never trained on.
PSNR is capped at 60 dB (identical frames would make a mean infinite).

- navigation: fixed action scripts and random walks, `steps` actions each; the baseline
  repeats the start frame (all the model was given);
- future frames: a fixed camera watching the rolling ball, two true frames in context,
  then `steps` predicted frames, autoregressive and by diffusion forcing (pyramid,
  window 2 and 4); the baseline repeats the last true frame ("copy"); "autoencoder" is
  each true frame encoded and decoded, the ceiling of a generated frame; each also
  scored over the pixels that moved (where the true frame differs from the last context
  frame: the part copying cannot get);
- autoencoder: reconstruction PSNR of held-out views;
- action accuracy, path accuracy (of the navigation rollouts) and the gap closed on the
  moving future frames: workbench/world/accuracy.py;
- revisit: three turns left then three right (a static world), so the last view is the
  first; the return frame against the first, with the whole path in context versus with
  only the last frame (a fresh session per step).

`resolution` renders the world at another size than the world model's 64 × 64 (and
samples at it), so that any checkpoint, the released BAGEL-7B-MoT included, runs the same
chains against the same truth.

Writes OUT/world-eval.json, OUT/world-eval.md (tables), OUT/world-eval.png (PSNR per
rollout step) and OUT/world-eval-strip.png (per navigation kind, the true frames above
the model's).
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from bagel.pipeline import BagelPipeline
from workbench.chains import navigate, predict
from workbench.metrics import psnr, ssim
from workbench.params import GenerationParams
from workbench.session import Session
from workbench.world import accuracy
from workbench.world.data import (
    TRAIN_LEVELS,
    Episode,
    draw_world,
    future,
    navigation,
    random_actions,
    walk,
)
from workbench.world.eval_report import markdown, write_report
from workbench.world.render import RESOLUTION

WORLD_MODEL = Path(__file__).resolve().parents[2] / "models" / "world-64"  # the checkout's
EVAL_STREAM = 7_000_003  # first key of every evaluation generator (training uses the seed)
UNSEEN_LEVEL = 100
SCRIPTS = {
    "walk-and-turn": ["forward", "forward", "turn_left", "forward", "turn_right", "forward"],
    "look-around": ["turn_right", "turn_right", "look_up", "look_down", "strafe_left", "back"],
}
REVISIT_OUT = ["turn_left"] * 3
REVISIT_BACK = ["turn_right"] * 3
PSNR_CAP = 60.0  # dB
MOVING_LEVEL = 0.02  # a pixel moved when a channel changed by more than this (of 1)
RESOLUTIONS = range(32, 1025, 16)  # the frame sides eval-world renders at


def world_params(
    timesteps: int = 10, seed: int = 0, resolution: int = RESOLUTION
) -> GenerationParams:
    """How the world model samples: no guidance (it was trained without dropped
    conditions), 64 × 64 (or `resolution`), the training time shift."""
    return GenerationParams(
        num_timesteps=timesteps,
        timestep_shift=2.0,
        cfg_text_scale=1.0,
        cfg_img_scale=1.0,
        height=resolution,
        width=resolution,
        seed=seed,
    )


def _images(frames: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(f) for f in frames]


def _psnr(a: Image.Image, b: Image.Image) -> float:
    """PSNR capped at PSNR_CAP: identical frames (a blocked move, a still ball) would
    otherwise make a mean infinite."""
    return min(psnr(a, b), PSNR_CAP)


def frame_scores(pred: Image.Image, truth: Image.Image) -> tuple[float, float]:
    """One frame against its true frame: (PSNR capped at PSNR_CAP, SSIM)."""
    return _psnr(pred, truth), ssim(pred, truth)


def _scores(pred: list[Image.Image], truth: list[Image.Image]) -> dict[str, list[float]]:
    return {
        "psnr": [_psnr(p, t) for p, t in zip(pred, truth, strict=True)],
        "ssim": [ssim(p, t) for p, t in zip(pred, truth, strict=True)],
    }


def _moving_psnr(
    pred: list[Image.Image], truth: list[Image.Image], last: Image.Image
) -> list[float | None]:
    """Per step, PSNR (capped) over the pixels where the true frame differs from the last
    context frame (by more than MOVING_LEVEL in a channel): the ball's old and new places,
    the part of a future frame that copying cannot get. None where nothing moved."""
    still = np.asarray(last, np.float64) / 255
    scores: list[float | None] = []
    for p, t in zip(pred, truth, strict=True):
        true = np.asarray(t, np.float64) / 255
        moving = np.abs(true - still).max(axis=-1) > MOVING_LEVEL
        if not moving.any():
            scores.append(None)
            continue
        mse = float(((np.asarray(p, np.float64) / 255 - true)[moving] ** 2).mean())
        scores.append(PSNR_CAP if mse == 0 else min(10 * np.log10(1 / mse), PSNR_CAP))
    return scores


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def summary(runs: list[dict[str, list]]) -> dict[str, list]:
    """Per step: mean PSNR / SSIM over the runs and the median PSNR; where the runs have
    moving-pixel PSNRs, their mean and the whole frame's mean PSNR over the runs in which
    something moved at that step (None where nothing moved in any)."""
    out = {}
    for key in ("psnr", "ssim"):
        per_step = list(zip(*[r[key] for r in runs], strict=True))
        out[key] = [round(statistics.fmean(v), 3) for v in per_step]
    out["psnr_median"] = [
        round(statistics.median(v), 3) for v in zip(*[r["psnr"] for r in runs], strict=True)
    ]
    if runs and "moving_psnr" in runs[0]:
        moving = list(zip(*[r["moving_psnr"] for r in runs], strict=True))
        whole = zip(*[r["psnr"] for r in runs], strict=True)
        out["moving_psnr"] = [_mean([x for x in v if x is not None]) for v in moving]
        out["moved_runs"] = [sum(x is not None for x in v) for v in moving]
        out["psnr_moved_frames"] = [
            _mean([p for p, m in zip(w, v, strict=True) if m is not None])
            for w, v in zip(whole, moving, strict=True)
        ]
    return out


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([EVAL_STREAM, *key])


def _navigation_rollout(
    pipe: BagelPipeline, episode: Episode, actions: list[str], params: GenerationParams
) -> list[Image.Image]:
    session = Session(pipe)
    session.add_image(Image.fromarray(episode.frames[0]))
    return [f.image for f in navigate(session, actions, params).frames]


def evaluate_autoencoder(pipe: BagelPipeline, frames: int, resolution: int = RESOLUTION) -> dict:
    """Reconstruction PSNR of held-out views through the autoencoder, the way a session
    takes an image in (a seeded posterior sample) and a frame out (decode, to uint8)."""
    values = []
    for e in range(frames):
        view = Image.fromarray(navigation(_rng(55, e), [], resolution=resolution).frames[0])
        values.append(_psnr(_through_autoencoder(pipe, view, e), view))
    return {"psnr_mean": round(statistics.fmean(values), 3), "frames": frames}


def _through_autoencoder(pipe: BagelPipeline, image: Image.Image, seed: int) -> Image.Image:
    import torch

    return pipe.decode_latent(pipe.encode_latent(image, torch.Generator().manual_seed(seed)))


def evaluate_navigation(
    pipe: BagelPipeline,
    episodes: int,
    steps: int,
    params: GenerationParams,
    strips: dict[str, list[list[Image.Image]]] | None = None,
    resolution: int = RESOLUTION,
) -> dict:
    """Model vs the start frame repeated, per script kind, over `episodes` worlds, and
    the rollouts' path accuracy; the first episode of each kind goes into `strips` as
    [true frames, model frames]."""
    kinds: dict[str, dict] = {}
    scripts = {name: (script * steps)[:steps] for name, script in SCRIPTS.items()}
    for name in [*scripts, "random-walk", "unseen-level"]:
        model_runs, copy_runs, paths = [], [], []
        for e in range(episodes):
            rng = _rng(len(kinds), e)
            actions = scripts.get(name) or random_actions(rng, steps)
            levels = (UNSEEN_LEVEL,) if name == "unseen-level" else TRAIN_LEVELS
            world = draw_world(rng, levels)
            episode = walk(world, actions, resolution)
            truth = _images(episode.frames[1:])
            rollout = _navigation_rollout(pipe, episode, actions, params)
            model_runs.append(_scores(rollout, truth))
            others = accuracy.path_truths(world, _rng(66, len(kinds), e), steps, resolution)
            paths.append(accuracy.path_results(rollout, truth, others))
            if strips is not None and e == 0:
                start = _images(episode.frames[:1])
                strips[name] = [start + truth, start + rollout]
            copy_runs.append(_scores([_images(episode.frames[:1])[0]] * steps, truth))
        kinds[name] = {
            "model": summary(model_runs),
            "copy": summary(copy_runs),
            "path_accuracy": accuracy.path_summary(paths),
        }
    return kinds


def _future_scores(pred: list[Image.Image], truth: list[Image.Image], last: Image.Image) -> dict:
    return {**_scores(pred, truth), "moving_psnr": _moving_psnr(pred, truth, last)}


def evaluate_future(
    pipe: BagelPipeline,
    episodes: int,
    steps: int,
    params: GenerationParams,
    resolution: int = RESOLUTION,
) -> dict:
    """Future frames of the rolling ball: autoregressive, forcing (window 2, 4), copy, and
    "autoencoder": each true frame through the autoencoder, the best a generated frame
    can score (the model's frames are decoded latents too)."""
    methods = {
        "autoregressive": dict(mode="autoregressive"),
        "forcing-w2": dict(mode="forcing", window=2, schedule="pyramid"),
        "forcing-w4": dict(mode="forcing", window=4, schedule="pyramid"),
    }
    runs: dict[str, list] = {name: [] for name in [*methods, "copy", "autoencoder"]}
    for e in range(episodes):
        episode = future(_rng(99, e), 2 + steps, resolution=resolution)
        context, truth = _images(episode.frames[:2]), _images(episode.frames[2:])
        for name, options in methods.items():
            session = Session(pipe)
            for image in context:
                session.add_image(image)
            frames = [f.image for f in predict(session, steps, params, **options).frames]
            runs[name].append(_future_scores(frames, truth, context[-1]))
        runs["copy"].append(_future_scores([context[-1]] * steps, truth, context[-1]))
        decoded = [_through_autoencoder(pipe, t, e * steps + k) for k, t in enumerate(truth)]
        runs["autoencoder"].append(_future_scores(decoded, truth, context[-1]))
    return {name: summary(r) for name, r in runs.items()}


def evaluate_revisit(
    pipe: BagelPipeline, episodes: int, params: GenerationParams, resolution: int = RESOLUTION
) -> dict:
    """The return frame vs the first, whole path in context vs only the last frame."""
    actions = REVISIT_OUT + REVISIT_BACK
    full, last_only, copy = [], [], []
    for e in range(episodes):
        episode = navigation(_rng(77, e), actions, moving=False, resolution=resolution)
        first = Image.fromarray(episode.frames[0])
        full.append(_psnr(_navigation_rollout(pipe, episode, actions, params)[-1], first))
        frame = first
        for k, action in enumerate(actions):  # a fresh session per step: no memory
            session = Session(pipe)
            session.add_image(frame)
            step_params = replace(params, seed=params.seed + k)
            frame = navigate(session, [action], step_params).frames[0].image
        last_only.append(_psnr(frame, first))
        copy.append(_psnr(Image.fromarray(episode.frames[-2]), first))
    mean = lambda v: round(statistics.fmean(v), 3)  # noqa: E731
    return {
        "full_context_psnr": mean(full),
        "last_frame_only_psnr": mean(last_only),
        "copy_previous_truth_psnr": mean(copy),
        "actions": actions,
    }


def evaluate(
    pipe: BagelPipeline,
    episodes: int = 4,
    steps: int = 8,
    timesteps: int = 10,
    seed: int = 0,
    strips: dict[str, list[list[Image.Image]]] | None = None,
    resolution: int = RESOLUTION,
) -> dict:
    """The whole evaluation as a JSON-able report; `strips` (if given) receives the frames
    of the first navigation episode of each kind, truth above model."""
    params = world_params(timesteps, seed, resolution)
    worlds = [draw_world(_rng(33, e)) for e in range(episodes)]
    fut = evaluate_future(pipe, episodes, steps, params, resolution)
    moved = {m: fut[m]["psnr_moved_frames"][0] for m in ("autoregressive", "copy", "autoencoder")}
    return {
        "model": pipe.identity,
        "episodes": episodes,
        "steps": steps,
        "resolution": resolution,
        "params": {"num_timesteps": timesteps, "timestep_shift": 2.0, "cfg": "off"},
        "autoencoder": evaluate_autoencoder(pipe, 8 * episodes, resolution),
        "actions": accuracy.evaluate_actions(pipe, worlds, params, resolution),
        "navigation": evaluate_navigation(pipe, episodes, steps, params, strips, resolution),
        "future": fut,
        "gap_closed": accuracy.gap_closed(
            moved["autoregressive"], moved["copy"], moved["autoencoder"]
        ),
        "revisit": evaluate_revisit(pipe, episodes, params, resolution),
    }


def command(args) -> int:
    """`workbench eval-world`."""
    import torch

    from bagel.checkpoint import load
    from bagel.errors import InputError

    for name in ("episodes", "steps", "timesteps"):
        value = getattr(args, name)
        if value < 1 or (name == "timesteps" and value < 2):
            raise InputError(f"--{name} must be at least {2 if name == 'timesteps' else 1}")
    if args.resolution not in RESOLUTIONS:
        raise InputError(
            f"the resolution must be a multiple of 16 from {RESOLUTIONS.start} to "
            f"{RESOLUTIONS[-1]} pixels, got {args.resolution}"
        )
    cuda = args.device.split(":")[0] == "cuda"
    if args.device != "cpu" and not (cuda and torch.cuda.is_available()):
        raise InputError(f"the device must be cpu or cuda (with a GPU present), got {args.device}")
    torch.set_num_threads(1)
    dtype = "bfloat16" if cuda else "float32"
    pipe = load(args.model or WORLD_MODEL, device=args.device, dtype=dtype)
    strips: dict[str, list[list[Image.Image]]] = {}
    report = evaluate(
        pipe, args.episodes, args.steps, args.timesteps, args.seed, strips, args.resolution
    )
    for path in write_report(report, Path(args.out), strips):
        print(path)
    print(markdown(report))
    return 0

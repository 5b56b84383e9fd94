"""Whether a world model's frames follow the commands (`workbench eval-world`).

- action accuracy: from one pose, each action's one-step prediction against the true
  next frames of every action from that pose; right when the commanded action's true
  frame is the nearest (lowest mean squared error, i.e. highest PSNR) of those that
  differ from it. A commanded move that a wall blocks is left out (its truth is the
  world standing still); other actions whose truth equals the commanded one's are no
  rivals. Chance is about 1 in 8.
- path accuracy: a rollout's frame after k actions against the true frames after k
  actions of its own path and of OTHER_PATHS random paths from the same start; right
  when its own is the nearest (of those that differ from it).
- gap closed: on the future frames in which something moved, step 1,
  (model − copy) / (autoencoder − copy) in PSNR: 0 is no better than copying the last
  frame, 1 reaches the autoencoder's ceiling.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from bagel.pipeline import BagelPipeline
from workbench.chains import navigate
from workbench.chains.actions import ACTIONS
from workbench.params import GenerationParams
from workbench.session import Session
from workbench.world.data import random_actions
from workbench.world.render import World

OTHER_PATHS = 7
PATH_STEPS = (4, 8)


def _mse(a, b) -> float:
    return float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean())


def nearest_is_own(pred, own, others) -> bool:
    """Whether `own` is strictly the nearest frame to `pred` (highest PSNR) among `own`
    and those of `others` that differ from it (frames: arrays or images of one size)."""
    own = np.asarray(own)
    rivals = [o for o in others if not np.array_equal(np.asarray(o), own)]
    mine = _mse(pred, own)
    return all(mine < _mse(pred, o) for o in rivals)


def action_right(pred, truths: dict[str, np.ndarray], commanded: str, blocked: set[str]):
    """True / False for a one-step prediction of `commanded` against the true next frame
    of every action (`truths`); None (left out) when the commanded move was blocked."""
    if commanded in blocked:
        return None
    others = [frame for action, frame in truths.items() if action != commanded]
    return nearest_is_own(pred, truths[commanded], others)


def tally(results: list[tuple[str, bool | None]]) -> dict:
    """(action, right or None) pairs → per action and overall: right, counted (not left
    out), left out, accuracy (None where nothing counted)."""

    def count(values: list[bool | None]) -> dict:
        counted = [v for v in values if v is not None]
        return {
            "right": sum(counted),
            "counted": len(counted),
            "left_out": len(values) - len(counted),
            "accuracy": round(sum(counted) / len(counted), 4) if counted else None,
        }

    names = list(dict.fromkeys(name for name, _ in results))
    per = {name: count([v for n, v in results if n == name]) for name in names}
    return {"per_action": per, **count([v for _, v in results])}


def gap_closed(model: float | None, copy: float | None, ceiling: float | None) -> float | None:
    """(model − copy) / (ceiling − copy); None without figures or without a gap to close."""
    if model is None or copy is None or ceiling is None or ceiling <= copy:
        return None
    return round((model - copy) / (ceiling - copy), 4)


def one_step_truths(world: World, resolution: int) -> tuple[dict[str, np.ndarray], set[str]]:
    """The true next frame of every action from `world`, and the blocked moves (those
    after which the camera's pose is unchanged)."""
    after = {action: world.step(action) for action in ACTIONS}
    truths = {action: w.render(resolution) for action, w in after.items()}
    return truths, {action for action, w in after.items() if w.pose == world.pose}


def evaluate_actions(
    pipe: BagelPipeline, worlds: list[World], params: GenerationParams, resolution: int
) -> dict:
    """Action accuracy over `worlds`: from each start view, every action once (a fresh
    session each)."""
    results = []
    for world in worlds:
        start = Image.fromarray(world.render(resolution))
        truths, blocked = one_step_truths(world, resolution)
        for action in ACTIONS:
            session = Session(pipe)
            session.add_image(start)
            pred = navigate(session, [action], params).frames[0].image
            results.append((action, action_right(pred, truths, action, blocked)))
    return {"worlds": len(worlds), **tally(results)}


def path_truths(
    world: World, rng: np.random.Generator, steps: int, resolution: int
) -> dict[int, list[np.ndarray]]:
    """Per k of PATH_STEPS (up to `steps`): the true frames after k actions of
    OTHER_PATHS random paths from `world` (drawn from `rng`)."""
    at = [k for k in PATH_STEPS if k <= steps]
    frames: dict[int, list[np.ndarray]] = {k: [] for k in at}
    for _ in range(OTHER_PATHS if at else 0):
        w = world
        for k, action in enumerate(random_actions(rng, max(at)), start=1):
            w = w.step(action)
            if k in frames:
                frames[k].append(w.render(resolution))
    return frames


def path_results(rollout: list, truth: list, others: dict[int, list[np.ndarray]]) -> dict:
    """Per k: whether the rollout's frame k is nearest its own path's true frame k
    (`truth[k - 1]`) among the other paths' (`others[k]`)."""
    return {k: nearest_is_own(rollout[k - 1], truth[k - 1], o) for k, o in others.items()}


def path_summary(runs: list[dict[int, bool]]) -> dict[str, dict]:
    """Per k: right of counted over the runs."""
    keys = runs[0] if runs else {}
    return {str(k): {"right": sum(r[k] for r in runs), "counted": len(runs)} for k in keys}


def markdown(report: dict) -> str:
    """The accuracy lines of eval-world's table."""
    lines = []
    actions = report.get("actions")
    if actions:
        per = ", ".join(
            f"{name.replace('_', ' ')} {a['right']}/{a['counted']}"
            for name, a in actions["per_action"].items()
        )
        overall = actions["accuracy"]
        lines.append(
            f"Action accuracy, one step from {actions['worlds']} start views: "
            f"{actions['right']}/{actions['counted']}"
            + (f" ({100 * overall:.0f}%)" if overall is not None else "")
            + f", {actions['left_out']} blocked moves left out; per action: {per}."
        )
    paths: dict[str, list[int]] = {}
    for kind in report["navigation"].values():
        for k, v in kind.get("path_accuracy", {}).items():
            total = paths.setdefault(k, [0, 0])
            total[0] += v["right"]
            total[1] += v["counted"]
    for k, (right, counted) in paths.items():
        per_kind = ", ".join(
            f"{name} {v['path_accuracy'][k]['right']}/{v['path_accuracy'][k]['counted']}"
            for name, v in report["navigation"].items()
        )
        lines.append(
            f"Path accuracy after {k} actions (own path vs {OTHER_PATHS} others): "
            f"{right}/{counted} ({100 * right / counted:.0f}%); {per_kind}."
        )
    gap = report.get("gap_closed")
    if gap is not None:
        lines.append(
            "Gap closed on the moving frames at step 1, (model − copy) / (autoencoder − "
            f"copy): {100 * gap:.0f}%."
        )
    return "".join(f"\n{line}\n" for line in lines)

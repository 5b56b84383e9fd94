"""Scenario runs and session replays spread over a Ray cluster (`--ray`).

One Ray actor per model replica (one GPU each on CUDA, `cpus` CPU cores each on the
CPU) loads the model once; the items (scenario files, saved sessions) go to whichever
replica is free next, so a slow item does not hold the others back. Each item writes
what the local command writes, where the local command writes it; on a cluster of
several machines those folders must therefore be on a file system they all share. An
item that fails is reported and the others finish. One progress bar counts the items.

Ray is an optional extra (`pip install 'bagel-workbench[ray]'`) and is imported only
here, only when a command asks for it.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bagel.errors import BagelError, InputError


@dataclass(frozen=True)
class Cluster:
    """Where and how wide: a Ray address (None: start a local cluster, unless this
    process already joined one), the number of replicas (None: as many as fit, at most
    one per item), and each replica's share."""

    address: str | None = None
    actors: int | None = None
    cpus: int = 1  # per replica on the CPU
    device: str = "cpu"


@dataclass(frozen=True)
class ItemResult:
    item: str  # the scenario file or session folder
    seconds: float
    frames: int | None = None  # a run: frames generated; a replay: frames compared
    texts: int | None = None  # a replay: texts compared
    differ: tuple[int, ...] = ()  # a replay: turns whose frame or text differs
    output: str | None = None  # a run: its folder; a replay: its report
    error: str | None = None  # None when it finished

    @property
    def ok(self) -> bool:
        return self.error is None


def import_ray():
    try:
        import ray
    except ImportError as err:
        raise InputError(
            "--ray needs Ray, which is not installed: pip install 'bagel-workbench[ray]'"
        ) from err
    return ray


def run_scenarios(
    items: list[tuple[Path, Path]], model: str, dtype: str | None, cluster: Cluster
) -> list[ItemResult]:
    """Run each (scenario file, output folder) as `workbench run` does, on the cluster."""
    jobs = [("run", str(path.resolve()), str(folder.resolve())) for path, folder in items]
    return _fan_out(jobs, model, dtype, cluster)


def replay_sessions(
    folders: list[Path], model: str, dtype: str | None, cluster: Cluster
) -> list[ItemResult]:
    """Replay each saved session folder as `workbench replay` does, on the cluster."""
    jobs = [("replay", str(folder.resolve()), None) for folder in folders]
    return _fan_out(jobs, model, dtype, cluster)


class Replica:
    """One model replica (a Ray actor): loads the model once, then takes items."""

    def __init__(self, model: str, device: str, dtype: str | None, threads: int):
        from bagel.checkpoint import load
        from workbench.threads import use_threads

        if device == "cpu":  # replicas sharing a machine: each its own cores, never more
            use_threads(threads)
        self.pipe = load(model, device=device, dtype=dtype)

    def run(self, scenario_file: str, folder: str) -> ItemResult:
        from workbench.scenario.read import load_scenario
        from workbench.scenario.run import run_scenario

        def work() -> ItemResult:
            result = run_scenario(load_scenario(scenario_file), self.pipe, folder)
            frames = sum(t.role == "model" and t.kind == "image" for t in result.session.turns)
            return ItemResult(scenario_file, 0.0, frames=frames, output=folder)

        return _timed(scenario_file, work)

    def replay(self, folder: str, _unused: None = None) -> ItemResult:
        from workbench.store import replay

        def work() -> ItemResult:
            report = replay(folder, self.pipe)
            differ = [f.turn for f in report.frames if f.max_abs_diff]
            differ += [turn for turn, same in report.texts_equal if not same]
            report_file = str(Path(folder) / "replay_report.json")
            return ItemResult(
                folder,
                0.0,
                frames=len(report.frames),
                texts=len(report.texts_equal),
                differ=tuple(sorted(differ)),
                output=report_file,
            )

        return _timed(folder, work)


def _timed(item: str, work: Callable[[], ItemResult]) -> ItemResult:
    started = time.perf_counter()
    try:
        result = work()
    except BagelError as err:
        return ItemResult(item, time.perf_counter() - started, error=str(err))
    except Exception:
        return ItemResult(item, time.perf_counter() - started, error=traceback.format_exc())
    return ItemResult(**{**result.__dict__, "seconds": time.perf_counter() - started})


def _fan_out(
    jobs: list[tuple[str, str, str | None]], model: str, dtype: str | None, cluster: Cluster
) -> list[ItemResult]:
    from tqdm import tqdm

    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    cuda = cluster.device.startswith("cuda")
    count = _replicas(ray, cluster, len(jobs), cuda)
    options = {"num_gpus": 1, "num_cpus": 1} if cuda else {"num_cpus": cluster.cpus}
    actor = ray.remote(**options)(Replica)
    device = "cuda" if cuda else cluster.device
    replicas = [actor.remote(model, device, dtype, cluster.cpus) for _ in range(count)]
    results: dict[int, ItemResult] = {}
    pending: dict[Any, tuple[int, Any]] = {}  # object ref -> (job index, replica)
    waiting = list(enumerate(jobs))
    try:
        with tqdm(total=len(jobs), unit="item", desc=f"{count} replica(s)", disable=None) as bar:
            for replica in replicas:
                _next(waiting, replica, pending)
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                index, replica = pending.pop(ref)
                results[index] = _result(ray, ref, jobs[index][1])
                bar.update(1)
                _next(waiting, replica, pending)
    finally:
        for replica in replicas:
            ray.kill(replica)
    return [results[i] for i in range(len(jobs))]


def _next(waiting: list, replica: Any, pending: dict) -> None:
    if waiting:
        index, (kind, item, folder) = waiting.pop(0)
        pending[getattr(replica, kind).remote(item, folder)] = (index, replica)


def _result(ray: Any, ref: Any, item: str) -> ItemResult:
    """The item's result; a replica that died (e.g. out of memory) fails the item only."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:
        return ItemResult(item, 0.0, error=f"the replica failed: {err}")


def _replicas(ray: Any, cluster: Cluster, items: int, cuda: bool) -> int:
    resources = ray.cluster_resources()
    fits = int(resources.get("GPU", 0)) if cuda else int(resources.get("CPU", 1)) // cluster.cpus
    count = cluster.actors if cluster.actors is not None else min(max(fits, 1), items)
    if count < 1:
        raise InputError(f"--actors must be at least 1, got {count}")
    if count > fits:
        need = "GPUs" if cuda else f"CPUs ({cluster.cpus} each)"
        raise InputError(f"{count} replicas do not fit: the Ray cluster has {fits} {need}")
    return count

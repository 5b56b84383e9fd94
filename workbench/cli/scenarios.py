"""`workbench run` and `workbench demo`: scenario files, one after another, on one model."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    RANDOM_WEIGHTS_NOTE,
    cluster,
    load_model,
    model_path,
)

if TYPE_CHECKING:
    from bagel.pipeline import BagelPipeline
    from workbench.scenario.read import Scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "scenarios"  # a source checkout's
WORLD_MODEL_NOTE = (
    "The world/ examples ran on models/world-64: a small model of the same architecture "
    "trained by `workbench train-world` on the rendered world the frames come from; "
    "`workbench eval-world` scores it against that world's true frames (docs/world.md)."
)
REAL_MODEL_HINT = (
    "With the real model: workbench run scenarios/*.yaml --model /path/to/BAGEL-7B-MoT "
    "--device cuda. The examples take 6 timesteps, sized for the tiny model; for full "
    "quality set num_timesteps: 50 in a copy of a file (docs/scenarios.md)."
)


def cmd_run(args: argparse.Namespace) -> int:
    """Validate every scenario file, load the model once, run each into --out/<file stem>/."""
    from workbench.scenario.read import load_scenario

    scenarios = [load_scenario(path) for path in args.scenarios]
    return _run_batch(scenarios, Path(args.out), args)


def cmd_demo(args: argparse.Namespace) -> int:
    """Every example scenario of scenarios/, on the tiny checkpoint unless --model."""
    from bagel.errors import InputError
    from workbench.scenario.read import load_scenario

    paths = sorted(EXAMPLES.glob("*.yaml"))
    if not paths:
        raise InputError(f"{EXAMPLES}: no example scenarios (the demo runs a source checkout's)")
    scenarios = [load_scenario(path) for path in paths]
    world = [load_scenario(path) for path in sorted((EXAMPLES / "world").glob("*.yaml"))]
    code = _run_batch(scenarios, Path(args.out), args)
    if args.model is None:
        print(RANDOM_WEIGHTS_NOTE)
    print(REAL_MODEL_HINT)
    if world and args.model is None and not Path(str(world[0].model)).is_dir():
        print(f"skipped scenarios/world/: its model {world[0].model} is not in this checkout")
    elif world:  # the rendered world's examples, on the model they name (trained on it)
        code = max(code, _run_batch(world, Path(args.out) / "world", args))
        if args.model is None:
            print(WORLD_MODEL_NOTE)
    return code


@dataclass
class _Row:
    """One line of the closing table."""

    name: str
    frames: int | None  # generated images; None when the scenario failed
    seconds: float
    folder: Path


def _run_batch(scenarios: list[Scenario], out: Path, args: argparse.Namespace) -> int:
    """Check every output folder and the one model all the scenarios share, load it, check
    each scenario against it; only then run them, one after another. A scenario that fails
    is reported and the next one runs (exit code 1)."""
    from bagel.errors import InputError
    from workbench.scenario.run import check_for_model, check_out_dir

    targets = _targets(scenarios, out)
    for scenario, folder in targets:
        check_out_dir(folder, scenario)
    model = _pick(scenarios, "model", args.model)
    device = _pick(scenarios, "device", args.device) or "cpu"
    dtype, profile = (
        _pick(scenarios, "dtype", args.dtype),
        _pick(scenarios, "profile", args.profile),
    )
    if getattr(args, "ray", None) is not None:
        if profile is not None:
            raise InputError("--profile (or a scenario's profile:) is not supported with --ray yet")
        if args.compile:
            raise InputError("--compile is not supported with --ray yet")
        return _run_on_ray(targets, model, device, dtype, args)
    pipe = load_model(model, device, dtype, profile, args.compile)
    for scenario in scenarios:
        check_for_model(scenario, pipe)
    rows: list[_Row] = []
    try:
        for scenario, folder in targets:
            rows.append(_run_one(scenario, pipe, folder))
    finally:  # on Ctrl-C too: what finished
        _print_table(rows)
    return EXIT_OK if all(row.frames is not None for row in rows) else EXIT_FAILED


def _run_on_ray(
    targets: list[tuple[Scenario, Path]],
    model: str | None,
    device: str,
    dtype: str | None,
    args: argparse.Namespace,
) -> int:
    """`run --ray`: the scenarios spread over Ray replicas (workbench.fanout)."""
    from workbench.fanout import run_scenarios

    replicas = cluster(args, device)
    items = [(scenario.source, folder) for scenario, folder in targets]
    results = run_scenarios(items, model_path(model), dtype, replicas)
    rows = []
    for (scenario, folder), result in zip(targets, results, strict=True):
        if not result.ok:
            print(f"error: {scenario.source.stem}: {result.error}", file=sys.stderr)
        rows.append(_Row(scenario.source.stem, result.frames, result.seconds, folder))
    _print_table(rows)
    return EXIT_OK if all(result.ok for result in results) else EXIT_FAILED


def _targets(scenarios: list[Scenario], out: Path) -> list[tuple[Scenario, Path]]:
    """Each scenario's folder, out/<file stem>; out itself must not be a run or session."""
    from workbench.scenario.read import ScenarioError
    from workbench.scenario.run import RUN_MANIFEST
    from workbench.store.session_format import MANIFEST

    for name in (MANIFEST, RUN_MANIFEST):
        if (out / name).exists():
            raise ScenarioError(
                out / name,
                None,
                "--out",
                f"{out} holds a saved session or a scenario run; each scenario writes to "
                "--out/<scenario file name>/, so choose another folder",
            )
    targets = [(scenario, out / scenario.source.stem) for scenario in scenarios]
    for i, (scenario, folder) in enumerate(targets):
        for other, taken in targets[:i]:
            if taken == folder:
                raise ScenarioError(
                    scenario.source,
                    None,
                    None,
                    f"would write to {folder} like {other.source}; run them separately",
                )
    return targets


def _pick(scenarios: list[Scenario], key: str, override: str | None) -> str | None:
    """The command line's value, else the one value the scenarios agree on (None: unset).
    Scenarios that name different models, devices or dtypes are refused, not grouped."""
    from bagel.errors import InputError

    if override is not None:
        return override
    values = {getattr(s, key) for s in scenarios}
    if len(values) > 1:
        named = "; ".join(f"{s.source.name}: {getattr(s, key) or 'unset'}" for s in scenarios)
        raise InputError(
            f"the scenarios name different {key}s ({named}); run them in separate "
            f"commands, or pass --{key} for all"
        )
    return values.pop()


def _run_one(scenario: Scenario, pipe: BagelPipeline, folder: Path) -> _Row:
    from bagel.errors import BagelError
    from workbench.scenario.run import run_scenario

    started, name = time.perf_counter(), scenario.source.stem
    bars = Bars(scenario)
    try:
        with bars:
            result = run_scenario(scenario, pipe, folder, bars.part_done, bars.denoised)
    except KeyboardInterrupt:
        print(f"interrupted: {name}: {_saved(scenario, folder, bars.done)}", file=sys.stderr)
        raise
    except BagelError as err:  # e.g. a chain refusing a request: the message says why
        print(f"error: {err}", file=sys.stderr)
        return _Row(name, None, time.perf_counter() - started, folder)
    except Exception:
        traceback.print_exc()
        print(f"error: {name} failed (traceback above)", file=sys.stderr)
        return _Row(name, None, time.perf_counter() - started, folder)
    frames = sum(t.role == "model" and t.kind == "image" for t in result.session.turns)
    seconds = time.perf_counter() - started
    exported = f", export {result.exported}" if result.exported else ""
    print(f"{name}: {frames} frames in {seconds:.1f} s; session {result.session_dir}{exported}")
    return _Row(name, frames, seconds, folder)


def _saved(scenario: Scenario, folder: Path, done: int) -> str:
    """What an interrupted run left: `done` parts (the start, then steps) were saved."""
    from workbench.scenario.read import Start

    if done == 0:
        return "nothing had finished; nothing saved"
    steps, has_start = len(scenario.steps), scenario.start != Start()
    what = f"the start and {done - 1}" if has_start else f"{done}"
    session = folder / "session"
    return (
        f"{what} of {steps} steps saved in {session} (it loads and replays; "
        f"`workbench export {session}` exports it)"
    )


class Bars:
    """Two tqdm bars on stderr, shown when it is a terminal: one over a scenario's start
    and steps, named as in its errors, and one over the denoising steps of the current one.
    """

    def __init__(self, scenario: Scenario):
        from workbench.scenario.read import Start

        self.labels = ["start"] if scenario.start != Start() else []
        self.labels += [f"steps[{i}].{step.chain}" for i, step in enumerate(scenario.steps)]
        self.name, self.done = scenario.source.stem, 0

    def __enter__(self) -> Bars:
        from tqdm import tqdm

        self.outer = tqdm(total=len(self.labels), desc=self.name, unit="step", disable=None)
        self.outer.set_postfix_str(self.labels[0])
        self.inner = tqdm(desc="denoising", unit="it", leave=False, disable=None)
        return self

    def __exit__(self, *exc) -> None:
        self.inner.close()
        self.outer.close()

    def part_done(self, done: int, total: int, at: str) -> None:
        """run_scenario's progress: `done` of the start and steps are finished and saved."""
        self.done = done
        self.outer.set_postfix_str(self.labels[done] if done < total else "done", refresh=False)
        self.outer.update(done - self.outer.n)
        self.inner.reset()

    def denoised(self, done: int, total: int) -> None:
        if self.inner.total != total:
            self.inner.reset(total=total)
        self.inner.update(done - self.inner.n)


def _print_table(rows: list[_Row]) -> None:
    if not rows:
        return
    width = max(len("scenario"), *(len(row.name) for row in rows))
    print(f"\n{'scenario':<{width}}  {'frames':>6}  {'seconds':>7}  output")
    for row in rows:
        frames, failed = ("-", "  (failed)") if row.frames is None else (str(row.frames), "")
        print(f"{row.name:<{width}}  {frames:>6}  {row.seconds:>7.1f}  {row.folder}{failed}")


def cmd_schema(args: argparse.Namespace) -> int:
    """The JSON Schema of a scenario file, for editors (docs/scenarios.md)."""
    from workbench.scenario.schema import ScenarioFile

    print(json.dumps(ScenarioFile.model_json_schema(), indent=2))
    return EXIT_OK

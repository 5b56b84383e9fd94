"""Running a loaded scenario (workbench/scenario/read.py reads and checks the file): the start
and every chain step on one persistent session, saved after each step, then the export.

out_dir receives `session/`, `run.json` (the scenario and each step's frames and trace)
and `export/`. A folder holding another run or session is refused; a rerun of the same
scenario replaces its own.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from bagel import safejson
from bagel.errors import BagelError, InputError
from workbench import outputs
from workbench.files import write_atomic
from workbench.scenario.positions import scenario_positions
from workbench.scenario.read import Scenario, ScenarioError, Start, Step
from workbench.session import Session
from workbench.store import save

if TYPE_CHECKING:
    from bagel.inputs import ProgressFn
    from bagel.pipeline import BagelPipeline

RUN_MANIFEST = "run.json"
RUN_FORMAT = "bagel-workbench-run"


StepProgress = Callable[[int, int, str], None]  # (units done, units total, what just ended)


@dataclass
class RunResult:
    scenario: Scenario
    session: Session
    results: list  # one workbench.chains.ChainResult per step
    session_dir: Path
    exported: Path | None = None  # the export folder; None when no format was asked


def run_scenario(
    scenario: Scenario,
    pipe: BagelPipeline,
    out_dir: str | Path,
    progress: StepProgress | None = None,
    denoise_progress: ProgressFn | None = None,
) -> RunResult:
    """Run a loaded scenario on `pipe`: the start, every step with a save after each,
    then the export.

    Everything is checked before the first turn: sizes and images against this model,
    the chain and export modules, the output folder. out_dir receives `session/` (saved
    after every step, so an interrupted run keeps what it made), `run.json` (the scenario
    and each step's frames and trace) and `export/` (workbench.export.export_session). A folder holding another session is refused;
    a rerun of the same scenario replaces its own.

    Args:
        progress: called after the start and after each step with (done, total, field).
        denoise_progress: called during the start's and each step's denoising with
            (steps done, total) of that part (a chain's total is over the whole chain).
    """
    out_dir = Path(out_dir)
    check_for_model(scenario, pipe)
    # imported when first needed (tests may put stand-ins first)
    chains = importlib.import_module("workbench.chains")
    export = importlib.import_module("workbench.export").export_session
    check_out_dir(out_dir, scenario)
    _claim(out_dir)
    session, session_dir, results = Session(pipe), out_dir / "session", []
    units = [("start", None)] if scenario.start != Start() else []
    units += [(f"steps[{i}].{s.chain}", s) for i, s in enumerate(scenario.steps)]
    for done, (at, step) in enumerate(units, 1):
        try:
            if step is None:
                _begin(session, scenario, denoise_progress)
            else:
                results.append(_call(chains, session, step, denoise_progress))
        except BagelError as err:
            raise ScenarioError(
                scenario.source, step.line if step else scenario.lines.get(at), at, str(err)
            ) from err
        save(session, session_dir)
        _write_run(out_dir, scenario, results)
        if progress:
            progress(done, len(units), at)
    exported = None
    if scenario.export.formats:
        formats, fps = list(scenario.export.formats), scenario.export.fps
        try:
            exported = export(session, out_dir / "export", formats, fps=fps, overwrite=True)
        except BagelError as err:
            raise scenario.error("export", str(err)) from err
    return RunResult(scenario, session, results, session_dir, exported)


def check_for_model(scenario: Scenario, pipe: BagelPipeline) -> None:
    """What only the loaded model can tell: image sizes and input images it accepts."""
    params = [("defaults", scenario.defaults)]
    params += [(f"steps[{i}].{s.chain}.params", s.params) for i, s in enumerate(scenario.steps)]
    for at, p in params:
        if p.height is not None:
            try:
                pipe.check_image_size(p.height, p.width)
            except InputError as err:
                key = "height" if str(err).startswith("height") else "width"
                line_at = f"{at}.{key}" if f"{at}.{key}" in scenario.lines else f"defaults.{key}"
                raise scenario.error(line_at, str(err).removeprefix(f"{key} ")) from err
    _check_positions(scenario, pipe)
    images = [("start.image", scenario.start.image)]
    for i, step in enumerate(scenario.steps):
        for j, beat in enumerate(step.args.get("beats", []) if step.chain == "story" else []):
            images.append((f"steps[{i}].story.beats[{j}].image", beat.image))
    for at, path in images:
        if path is not None:
            try:
                pipe.prepare_image(path)
            except BagelError as err:
                raise scenario.error(at, str(err)) from err


def _check_positions(scenario: Scenario, pipe: BagelPipeline) -> None:
    """The run's turns must fit in the model's positions (workbench.scenario.positions), or the
    session would refuse the turn that passes the limit once running."""
    limit = pipe.config.llm.max_position_embeddings
    for at, total in scenario_positions(scenario, pipe):
        if total > limit:
            raise scenario.error(
                at,
                f"the run would take up to {total} positions by the end of this step, past "
                f"the model's limit of {limit}; use fewer frames, steps or rounds, shorter "
                "texts or a smaller max_think_tokens",
            )


def _begin(session: Session, scenario: Scenario, progress: ProgressFn | None) -> None:
    if scenario.start.image is not None:
        session.add_image(scenario.start.image, seed=scenario.seed)
    else:
        session.add_text(scenario.start.prompt)  # blank: the official empty prompt
        session.generate_image(scenario.defaults, progress)


def _call(chains, session: Session, step: Step, progress: ProgressFn | None):
    args = dict(step.args)
    if step.chain == "story":
        args["beats"] = [
            chains.Beat(b.text, None if b.image is None else str(b.image)) for b in args["beats"]
        ]
    if progress is not None:
        args["progress"] = progress
    return getattr(chains, step.chain)(session, **args, params=step.params)


def check_out_dir(out_dir: str | Path, scenario: Scenario) -> None:
    """Refuse an output folder that is a saved session or holds another run or session,
    or that workbench.outputs refuses (the scenario's files inside it, a link, a file,
    read-only); run_scenario checks it too; a caller running several scenarios checks
    them all first."""
    out_dir = Path(out_dir)
    if (out_dir / "session.json").exists():
        raise ScenarioError(
            out_dir / "session.json",
            None,
            "out_dir",
            "this folder is a saved session; choose an empty or new output folder",
        )
    try:
        outputs.check_target(out_dir, input_files(scenario))
        for name, folder in (("session", True), (RUN_MANIFEST, False), ("export", True)):
            outputs.check_target(out_dir / name, folder=folder)
    except outputs.OutputError as err:
        raise ScenarioError(out_dir, None, "out_dir", str(err)) from None
    owner, folder = _owner(out_dir / RUN_MANIFEST), out_dir / "session"
    if owner not in (None, str(scenario.source)) or (owner is None and folder.exists()):
        whose = f"the run of scenario {owner}" if owner else "a session of unknown origin"
        raise ScenarioError(
            folder / "session.json" if folder.exists() else out_dir / RUN_MANIFEST,
            None,
            "out_dir",
            f"holds {whose}, not of {scenario.source}; choose an empty or new output folder",
        )
    export = out_dir / "export"
    if owner is None and export.is_dir() and outputs.made_by(export) != "export":
        if any(export.iterdir()):
            raise ScenarioError(
                export,
                None,
                "out_dir",
                "holds a folder `export` that no export made; choose an empty or new output folder",
            )


def input_files(scenario: Scenario) -> list[Path]:
    """The files a run of the scenario reads: the file itself and the images it names."""
    found = [scenario.source, scenario.start.image]
    for step in scenario.steps:
        found += [beat.image for beat in step.args.get("beats", []) if step.chain == "story"]
    return [path for path in found if path is not None]


def _claim(out_dir: Path) -> None:
    """Clear this scenario's previous session and export (a save keeps image files already
    present, so stale frames would survive); create the folder. check_out_dir has made
    sure that they are this scenario's own and no links."""
    for name in ("session", "export"):
        if (out_dir / name).is_dir():
            shutil.rmtree(out_dir / name)
    out_dir.mkdir(parents=True, exist_ok=True)


def _owner(run_manifest: Path) -> str | None:
    try:
        content = safejson.loads(run_manifest.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(content, dict) and content.get("format") == RUN_FORMAT:
        return content.get("scenario")
    return None


def _write_run(out_dir: Path, scenario: Scenario, results: list) -> None:
    steps = [
        {
            "chain": step.chain,
            "kind": result.kind,
            "stopped": result.stopped,
            "frames": [
                {"turn": f.turn, "label": f.label, "caption": f.caption} for f in result.frames
            ],
            "trace": [_plain(t) for t in result.trace],
        }
        for step, result in zip(scenario.steps, results, strict=False)
    ]
    content = {
        "format": RUN_FORMAT,
        "scenario": str(scenario.source),
        "name": scenario.name,
        "steps_done": len(results),
        "steps_total": len(scenario.steps),
        "steps": steps,
    }
    text = json.dumps(content, indent=2, ensure_ascii=False, default=str) + "\n"
    write_atomic(out_dir / RUN_MANIFEST, lambda tmp: tmp.write_bytes(text.encode()))


def _plain(item: Any) -> Any:
    """A trace entry for JSON: a dataclass's fields without its images."""
    if not dataclasses.is_dataclass(item):
        return item
    return {
        f.name: getattr(item, f.name)
        for f in dataclasses.fields(item)
        if not isinstance(getattr(item, f.name), Image.Image)
    }

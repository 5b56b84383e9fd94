"""The `workbench` command: a dispatch table of subcommands, no work at import time.

Exit codes:
    0    ok (for `replay`: every frame and text reproduced exactly)
    1    failure: an unexpected error (printed with its traceback), a scenario of
         `run` / `demo` that failed once running (the others still run), or a `replay`
         that differs
    2    bad input: a file, argument, folder or checkpoint the user can fix (one line
         naming it); `run` and `demo` check every scenario, output folder and the model
         before running any, so then nothing has run or been written
    130  interrupted (Ctrl-C), after the steps that finished were saved
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bagel.pipeline import BagelPipeline
    from workbench.scenario.read import Scenario

DEFAULT_TINY = Path(".cache/tiny-bagel")
EXAMPLES = Path(__file__).resolve().parent.parent / "scenarios"  # a source checkout's
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
RANDOM_WEIGHTS_NOTE = (
    "NOTE: this is a tiny checkpoint with RANDOM weights: its images are noise and its "
    "answers gibberish. Point --model at a real BAGEL-7B-MoT folder (or hub id, when "
    "online) for real output."
)
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


# -- run and demo -----------------------------------------------------------------------


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
    pipe = _load(model, device, dtype, profile, args.compile)
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

    cluster = _cluster(args, device)
    items = [(scenario.source, folder) for scenario, folder in targets]
    results = run_scenarios(items, _model_path(model), dtype, cluster)
    rows = []
    for (scenario, folder), result in zip(targets, results, strict=True):
        if not result.ok:
            print(f"error: {scenario.source.stem}: {result.error}", file=sys.stderr)
        rows.append(_Row(scenario.source.stem, result.frames, result.seconds, folder))
    _print_table(rows)
    return EXIT_OK if all(result.ok for result in results) else EXIT_FAILED


def _cluster(args: argparse.Namespace, device: str):
    from workbench.fanout import Cluster, import_ray

    import_ray()  # a clear error before any work when Ray is missing
    address = None if args.ray == "local" else args.ray
    return Cluster(address, args.actors, args.cpus_per_actor, device)


def _model_path(model: str | None) -> str:
    """What a replica loads: an existing folder made absolute (replicas may start in
    another folder), a hub id as given, the tiny default made here first."""
    path = _tiny() if model is None else Path(model)
    return str(path.resolve()) if path.exists() else str(model)


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
    bars = _Bars(scenario)
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


class _Bars:
    """Two tqdm bars on stderr, shown when it is a terminal: one over a scenario's start
    and steps, named as in its errors, and one over the denoising steps of the current one.
    """

    def __init__(self, scenario: Scenario):
        from workbench.scenario.read import Start

        self.labels = ["start"] if scenario.start != Start() else []
        self.labels += [f"steps[{i}].{step.chain}" for i, step in enumerate(scenario.steps)]
        self.name, self.done = scenario.source.stem, 0

    def __enter__(self) -> _Bars:
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


# -- replay and export ------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    """Regenerate saved sessions' outputs and compare them; 0 all identical, 1 not."""
    from bagel.errors import InputError
    from workbench.outputs import replay_report_path

    folders = [Path(p) for p in args.sessions]
    if args.report is not None and (len(folders) > 1 or args.ray is not None):
        raise InputError("--report names one file: give it with one SESSION_DIR, without --ray")
    if args.ray is not None:
        if args.profile is not None or args.compile:
            raise InputError("--profile and --compile are not supported with --ray yet")
        return _replay_on_ray(folders, args)
    paths = [
        replay_report_path(folder, args.report) for folder in folders
    ]  # before the model loads
    pipe = _load_for_session(folders[0], args)
    codes = [_replay_one(folder, pipe, path) for folder, path in zip(folders, paths, strict=True)]
    return max(codes)


def _replay_on_ray(folders: list[Path], args: argparse.Namespace) -> int:
    """`replay --ray`: the sessions spread over Ray replicas (workbench.fanout)."""
    from workbench.fanout import replay_sessions
    from workbench.store.session_format import read_manifest

    manifest = read_manifest(folders[0], None, allow_other_checkpoint=True)
    device = args.device or manifest.get("device") or "cpu"
    cluster = _cluster(args, device)
    dtype = args.dtype or manifest.get("dtype")
    results = replay_sessions(folders, _model_path(args.model), dtype, cluster)
    for result in results:
        if not result.ok:
            print(f"error: {result.item}: {result.error}", file=sys.stderr)
            continue
        outcome = f"turns {list(result.differ)} differ" if result.differ else "identical"
        print(
            f"{result.item}: replayed {result.frames} frame(s) and {result.texts} text(s) "
            f"in {result.seconds:.1f} s: {outcome}; report: {result.output}"
        )
    same = all(result.ok and not result.differ for result in results)
    return EXIT_OK if same else EXIT_FAILED


def _replay_one(folder: Path, pipe: BagelPipeline, path: Path) -> int:
    from workbench.store import replay

    report = replay(folder, pipe, report=path)
    print(f"replay: {report.verdict()}")
    for k in report.frames_differing:
        f = report.frames[k - 1]
        print(
            f"  frame {k} (turn {f.turn}): max abs diff {f.max_abs_diff}/255, PSNR {f.psnr:.1f} dB"
        )
    if report.texts_differing:
        print(f"  texts differ at turns {report.texts_differing}")
    print(f"report: {path}")
    return EXIT_OK if report.identical else EXIT_FAILED


def cmd_export(args: argparse.Namespace) -> int:
    """Export a saved session's frames; every format unless some are named."""
    from workbench.export import FORMATS, export_session

    folder = Path(args.session)
    formats = [name for name in sorted(FORMATS) if getattr(args, f"format_{name}")]
    formats = formats or sorted(FORMATS)
    out = Path(args.out) if args.out else _beside(folder, "-export")
    pipe = None if args.model is None else _load_for_session(folder, args)
    path = export_session(
        folder,
        out,
        formats,
        pipe=pipe,
        fps=args.fps,
        include=args.include,
        overwrite=args.overwrite,
    )
    print(f"exported {', '.join(formats)} to {path}: {', '.join(_listing(path))}")
    if pipe is None:
        print("(no drift metric: pass --model with the session's checkpoint for it)")
    return EXIT_OK


def _load_for_session(folder: Path, args: argparse.Namespace) -> BagelPipeline:
    """--model (default: the tiny checkpoint) on the session's own device kind, dtype and
    quantisation unless --device / --dtype / --profile say otherwise."""
    from workbench.store.session_format import read_manifest

    # device and dtype only: the command's own reader checks the snapshot, once
    manifest = read_manifest(folder, None, allow_other_checkpoint=True, check_snapshot=False)
    device = args.device or manifest.get("device") or "cpu"
    profile = args.profile or _quantised_kind(manifest.get("profile"))
    dtype = args.dtype or (None if args.profile else manifest.get("dtype"))
    return _load(args.model, device, dtype, profile, args.compile)


def _quantised_kind(saved: str | None) -> str | None:
    """int8 / nf4 from a session's profile (they change every output; offload and the
    full-precision ones do not, and follow --device / --dtype)."""
    kind = (saved or "").split("+")[0]
    return kind if kind in ("int8", "nf4") else None


def _beside(folder: Path, suffix: str) -> Path:
    folder = folder.resolve()
    return folder.with_name(folder.name + suffix)


def _listing(folder: Path) -> list[str]:
    return [
        p.name + ("/" if p.is_dir() else "")
        for p in sorted(folder.iterdir())
        if not p.name.startswith(".")
    ]


# -- the browser app ----------------------------------------------------------------------


def cmd_app(args: argparse.Namespace) -> int:
    """Serve the browser app on --address (127.0.0.1 unless another is chosen)."""
    from bagel.errors import InputError
    from workbench.app.launch import run_app

    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be at least 1, not {args.threads}")
    app_args = []
    for name in ("model", "device", "sessions", "threads"):
        if getattr(args, name) is not None:
            app_args += [f"--{name}", str(getattr(args, name))]
    run_app(args.address, args.port, app_args)
    return EXIT_OK


# -- model loading ----------------------------------------------------------------------


def _load(
    model: str | Path | None,
    device: str,
    dtype: str | None,
    profile: str | None = None,
    compile: bool = False,
) -> BagelPipeline:
    """Load `model`; None is the tiny random checkpoint in DEFAULT_TINY (made if missing)."""
    from bagel.checkpoint import load

    if model is None:
        model = _tiny()
    how = ", ".join(x for x in (profile, "compiled" if compile else None) if x)
    print(f"loading {model} on {device}" + (f" ({how})" if how else ""), flush=True)
    started = time.perf_counter()
    pipe = load(model, device=device, dtype=dtype, profile=profile, compile=compile)
    print(f"loaded in {time.perf_counter() - started:.1f} s", flush=True)
    return pipe


def _tiny() -> Path:
    from bagel.checkpoint import REQUIRED_FILES
    from bagel.tiny import make_tiny

    if not all((DEFAULT_TINY / name).is_file() for name in REQUIRED_FILES):
        print(f"making a tiny random checkpoint in {DEFAULT_TINY}", flush=True)
        make_tiny(DEFAULT_TINY)
    print(RANDOM_WEIGHTS_NOTE, flush=True)
    return DEFAULT_TINY


# -- serve ------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from bagel.errors import InputError

    try:
        from workbench.server.run import serve
    except ImportError as err:
        raise InputError(
            f"workbench serve needs {err.name}: pip install 'bagel-workbench[serve]'"
        ) from err
    return serve(args, _load)


# -- make-tiny and info -----------------------------------------------------------------


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from bagel.tiny import make_tiny

    print(make_tiny(args.folder, seed=args.seed))
    return EXIT_OK


def cmd_train_world(args: argparse.Namespace) -> int:
    from workbench.world.train import command

    return command(args)


def cmd_eval_world(args: argparse.Namespace) -> int:
    from workbench.world.eval import command

    return command(args)


def cmd_info(args: argparse.Namespace) -> int:
    from bagel.checkpoint import check_checkpoint, checkpoint_identity, read_header, resolve_folder
    from bagel.config import BagelConfig
    from bagel.errors import CheckpointError

    problems = check_checkpoint(args.model)  # what `load` would refuse, all of it
    if problems:
        raise CheckpointError(
            f"{args.model}: {len(problems)} problem(s) that loading refuses:\n"
            + "\n".join(problems)
        )
    folder = resolve_folder(args.model)
    config = BagelConfig.from_checkpoint(folder)
    counts = {}
    for name in ("ema.safetensors", "ae.safetensors"):
        shapes = read_header(folder / name)
        counts[name] = {
            "tensors": len(shapes),
            "parameters": sum(_numel(s) for s in shapes.values()),
        }
    info = {
        "folder": str(folder),
        "identity": checkpoint_identity(folder),
        "llm": vars(config.llm),
        "vit": vars(config.vit),
        "ae": {**vars(config.ae), "ch_mult": list(config.ae.ch_mult)},
        "max_image_side": config.vae_max_side,
        "weights": counts,
    }
    if args.profile is not None:
        info["memory"] = profile_memory(folder, args.profile, args.device, args.gpu_memory)
    print(json.dumps(info, indent=2))
    return EXIT_OK


def profile_memory(
    folder: Path, profile: str, device: str, gpu_memory: str | None
) -> dict[str, object]:
    """The weight bytes per device of `profile`, from the safetensors headers alone."""
    import torch
    from accelerate.utils import convert_file_size_to_int

    from bagel.checkpoint import read_header
    from bagel.errors import CheckpointError
    from bagel.profiles import device_bytes, parse_profile, profile_dtype

    target = torch.device(device)
    chosen = parse_profile(profile, target)
    if chosen.weights == "df11":
        raise CheckpointError("info --profile df11: not computed (DFloat11 sizes vary by layer)")
    if chosen.offload and gpu_memory is None:
        raise CheckpointError(f"info --profile {chosen.name}: pass --gpu-memory, e.g. 20GiB")
    try:
        budget = None if gpu_memory is None else convert_file_size_to_int(_size(gpu_memory))
    except ValueError as err:
        raise CheckpointError(f"--gpu-memory {gpu_memory!r}: {err}") from err
    sizes = device_bytes(
        read_header(folder / "ema.safetensors"),
        read_header(folder / "ae.safetensors"),
        chosen,
        profile_dtype(chosen, None, target),
        target,
        budget,
    )
    return {
        "profile": chosen.name,
        "bytes": sizes,
        "GiB": {k: round(v / 2**30, 3) for k, v in sizes.items()},
    }


def _size(text: str) -> str | int:
    return int(text) if text.isdigit() else text  # plain digits: bytes


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


# -- the parser -------------------------------------------------------------------------


def _model_options(p: argparse.ArgumentParser, model_help: str) -> None:
    from bagel.profiles import PROFILES

    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    p.add_argument(
        "--profile",
        default=None,
        help=f"memory profile: {', '.join(PROFILES)} (docs/profiles.md); "
        "default fp32 on CPU, bf16 on CUDA",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the decoder layers (same outputs; pays off on CUDA)",
    )


def _ray_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="spread the items over Ray replicas (a local cluster, or the one at ADDRESS)",
    )
    p.add_argument("--actors", type=int, default=None, help="replicas (default: as many as fit)")
    p.add_argument("--cpus-per-actor", type=int, default=1, help="CPU cores per CPU replica")


def build_parser() -> argparse.ArgumentParser:
    from workbench.export import FORMATS

    parser = argparse.ArgumentParser(prog="workbench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = f"checkpoint folder or hub id (default: the scenario's, else a tiny random one in {DEFAULT_TINY})"

    p = sub.add_parser("run", help="run scenario files, one after another, on one model")
    p.add_argument("scenarios", nargs="+", type=Path, metavar="SCENARIO")
    p.add_argument("--out", default="runs", help="each scenario writes to OUT/<file name>/")
    _model_options(p, tiny)
    _ray_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run every example scenario (tiny random model by default)")
    p.add_argument("--out", default="demo-output", help="each scenario writes to OUT/<file name>/")
    _model_options(p, f"checkpoint folder or hub id (default: a tiny random one in {DEFAULT_TINY})")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("replay", help="regenerate saved sessions and compare every output")
    p.add_argument("sessions", nargs="+", type=Path, metavar="SESSION_DIR")
    _model_options(
        p,
        f"the sessions' checkpoint (default: the tiny one in {DEFAULT_TINY}); "
        "device and dtype default to the first session's",
    )
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        help="write the JSON report here (default: SESSION_DIR/replay_report.json)",
    )
    _ray_options(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("export", help="export a saved session's frames (no model needed)")
    p.add_argument("session", type=Path, metavar="SESSION_DIR")
    p.add_argument("--out", default=None, help="default: SESSION_DIR-export beside it")
    for name in sorted(FORMATS):
        p.add_argument(
            f"--{name}",
            dest=f"format_{name}",
            action="store_true",
            help=f"write {name} (no format named: all)",
        )
    p.add_argument("--fps", type=float, default=4.0, help="gif and mp4 frame rate")
    p.add_argument(
        "--include",
        choices=("generated", "all"),
        default="generated",
        help="the model's images only, or input images too",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out when an earlier export made it"
    )
    _model_options(p, "the session's checkpoint, for the drift metric (default: no drift)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="an HTTP API over persistent sessions on one model")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (others need a token)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--sessions", type=Path, default=Path("out/served-sessions"))
    p.add_argument("--token", default=None, help="bearer token (default: $WORKBENCH_TOKEN)")
    _model_options(p, f"checkpoint folder or hub id (default: the tiny one in {DEFAULT_TINY})")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("app", help="serve the browser app (on 127.0.0.1 unless --address)")
    p.add_argument(
        "--address", default="127.0.0.1", help="where to listen; 0.0.0.0 serves other machines"
    )
    p.add_argument("--port", type=int, default=None, help="default: 8501")
    p.add_argument("--model", default=None, help="checkpoint folder or hub id (default: tiny)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.add_argument("--sessions", default=None, help="where sessions are saved (out/sessions)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (all cores but one)"
    )
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("make-tiny", help="write a tiny random checkpoint in the official layout")
    p.add_argument("folder", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_tiny)

    p = sub.add_parser("train-world", help="train the world model on the rendered world")
    p.add_argument("out", type=Path, metavar="OUT", help="checkpoint folder (official layout)")
    p.add_argument("--steps", type=int, default=20000, help="decoder steps (after the AE's)")
    p.add_argument("--ae-steps", type=int, default=1500, help="autoencoder steps (first)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=4e-4, help="decoder model learning rate")
    p.add_argument("--ae-lr", type=float, default=1e-3, help="autoencoder learning rate")
    p.add_argument(
        "--ae-decoder-every",
        type=int,
        default=2,
        help="after the AE phase, train the AE's decoder alone every N steps (0: never)",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/train/")
    p.add_argument("--minutes", type=float, default=None, help="stop (and save) after this")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--render-workers",
        type=int,
        default=0,
        help="processes rendering the next steps' batches while a step trains (0: inline)",
    )
    p.add_argument("--device", default="cpu", help="where the model trains: cpu or cuda")
    p.add_argument(
        "--motion-weight",
        type=float,
        default=0.0,
        help="future frames: weigh each token by 1 + this x its change from the last frame",
    )
    p.add_argument("--hidden", type=int, default=128, help="decoder hidden size (a new run)")
    p.add_argument(
        "--latent-patch-size",
        type=int,
        default=2,
        help="latent patch side, a new run: 2 (16 tokens a frame) or 1 (64 tokens)",
    )
    p.add_argument(
        "--context-noise",
        type=float,
        default=0.0,
        help="noise context frames' latents to a random level up to this (0: off)",
    )
    p.add_argument(
        "--autoencoder",
        default=None,
        help="a new run starts from this checkpoint's trained autoencoder (decoder phase)",
    )
    p.set_defaults(func=cmd_train_world)

    p = sub.add_parser("eval-world", help="score world-model rollouts against the renderer")
    p.add_argument("--model", default=None, help="checkpoint folder (default: the shipped one)")
    p.add_argument("--episodes", type=int, default=4, help="episodes per script kind")
    p.add_argument("--steps", type=int, default=8, help="rollout length")
    p.add_argument("--timesteps", type=int, default=10, help="denoising steps per frame")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("world-eval"))
    p.add_argument("--resolution", type=int, default=64, help="frame side the world is rendered at")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (bfloat16) for a large model")
    p.set_defaults(func=cmd_eval_world)

    p = sub.add_parser("info", help="describe a checkpoint folder without loading its weights")
    p.add_argument("model")
    p.add_argument(
        "--profile", default=None, help="also print the weight bytes each device would hold"
    )
    p.add_argument("--device", default="cpu", help="with --profile: cpu or cuda (default cpu)")
    p.add_argument(
        "--gpu-memory", default=None, help="with an offload profile: the GPU budget, e.g. 20GiB"
    )
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    from bagel.errors import BagelError

    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.func
    try:
        return command(args)
    except BagelError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
        traceback.print_exc()
        return EXIT_FAILED

"""The `workbench` command line: one builder per group of verbs, each verb bound to its
function (`args.func`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from workbench.cli import checkpoints, scenarios, serving, sessions, world
from workbench.models import DEFAULT_TINY

AddVerb = Callable[..., argparse.ArgumentParser]  # the subparsers' add_parser

DESCRIPTION = """\
Run BAGEL on scenario files, replay and export saved sessions, and serve the model
over HTTP or in the browser."""
EXAMPLES = """\
examples:
  workbench demo                           # the example scenarios, on a tiny random model
  workbench run scenarios/street_navigation.yaml --model /path/to/BAGEL-7B-MoT --device cuda
  workbench replay runs/street_navigation/session        # regenerate it, compare each frame
  workbench export runs/street_navigation/session --gif  # its frames as a GIF
  workbench app                            # the browser app, on http://127.0.0.1:8501
  workbench info /path/to/BAGEL-7B-MoT     # a checkpoint, without loading its weights
  workbench schema scenario                # scenario files' JSON Schema, for editors

`workbench VERB --help` lists a verb's options.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add_verbs in (
        add_scenario_verbs,
        add_session_verbs,
        add_serving_verbs,
        add_checkpoint_verbs,
        add_world_verbs,
    ):
        add_verbs(sub.add_parser)
    return parser


# -- options several verbs take ---------------------------------------------------------


def model_options(p: argparse.ArgumentParser, model_help: str) -> None:
    """--model, --device, --dtype, --profile, --compile, --threads."""
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
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for the model (default: the cores not busy with other work)",
    )
    p.set_defaults(uses_threads=True)


def ray_options(p: argparse.ArgumentParser) -> None:
    """--ray [ADDRESS], --actors, --cpus-per-actor."""
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


# -- the groups of verbs ----------------------------------------------------------------


def add_scenario_verbs(add_verb: AddVerb) -> None:
    """run, demo, schema (workbench/cli/scenarios.py)."""
    p = add_verb("run", help="run scenario files, one after another, on one model")
    p.add_argument("scenarios", nargs="+", type=Path, metavar="SCENARIO")
    p.add_argument("--out", default="runs", help="each scenario writes to OUT/<file name>/")
    model_options(
        p,
        "checkpoint folder or hub id (default: the scenario's, else a tiny random one in "
        f"{DEFAULT_TINY})",
    )
    ray_options(p)
    p.set_defaults(func=scenarios.cmd_run)

    p = add_verb("demo", help="run every example scenario (tiny random model by default)")
    p.add_argument("--out", default="demo-output", help="each scenario writes to OUT/<file name>/")
    model_options(p, f"checkpoint folder or hub id (default: a tiny random one in {DEFAULT_TINY})")
    p.set_defaults(func=scenarios.cmd_demo)

    p = add_verb("schema", help="print the JSON Schema of scenario files (for editors)")
    p.add_argument("kind", choices=["scenario"])
    p.set_defaults(func=scenarios.cmd_schema)


def add_session_verbs(add_verb: AddVerb) -> None:
    """replay, export (workbench/cli/sessions.py)."""
    from workbench.export import FORMATS

    p = add_verb("replay", help="regenerate saved sessions and compare every output")
    p.add_argument("sessions", nargs="+", type=Path, metavar="SESSION_DIR")
    model_options(
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
    ray_options(p)
    p.set_defaults(func=sessions.cmd_replay)

    p = add_verb("export", help="export a saved session's frames (no model needed)")
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
    model_options(p, "the session's checkpoint, for the drift metric (default: no drift)")
    p.set_defaults(func=sessions.cmd_export)


def add_serving_verbs(add_verb: AddVerb) -> None:
    """serve, app (workbench/cli/serving.py)."""
    p = add_verb("serve", help="an HTTP API over persistent sessions on one model")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (others need a token)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--sessions", type=Path, default=Path("out/served-sessions"))
    p.add_argument("--token", default=None, help="bearer token (default: $WORKBENCH_TOKEN)")
    p.add_argument("--max-jobs", type=int, default=32, help="queued and running jobs per client")
    p.add_argument("--max-sessions", type=int, default=64, help="sessions per client")
    model_options(p, f"checkpoint folder or hub id (default: the tiny one in {DEFAULT_TINY})")
    p.set_defaults(func=serving.cmd_serve)

    p = add_verb("app", help="serve the browser app (on 127.0.0.1 unless --address)")
    p.add_argument(
        "--address", default="127.0.0.1", help="where to listen; 0.0.0.0 serves other machines"
    )
    p.add_argument("--port", type=int, default=None, help="default: 8501")
    p.add_argument("--model", default=None, help="checkpoint folder or hub id (default: tiny)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.add_argument("--sessions", default=None, help="where sessions are saved (out/sessions)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for the model (default: the free cores but one, kept for the browser)",
    )
    p.set_defaults(func=serving.cmd_app)


def add_checkpoint_verbs(add_verb: AddVerb) -> None:
    """make-tiny, info (workbench/cli/checkpoints.py)."""
    p = add_verb("make-tiny", help="write a tiny random checkpoint in the official layout")
    p.add_argument("folder", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=checkpoints.cmd_make_tiny)

    p = add_verb("info", help="describe a checkpoint folder without loading its weights")
    p.add_argument("model")
    p.add_argument(
        "--profile", default=None, help="also print the weight bytes each device would hold"
    )
    p.add_argument("--device", default="cpu", help="with --profile: cpu or cuda (default cpu)")
    p.add_argument(
        "--gpu-memory", default=None, help="with an offload profile: the GPU budget, e.g. 20GiB"
    )
    p.set_defaults(func=checkpoints.cmd_info)


def add_world_verbs(add_verb: AddVerb) -> None:
    """train-world, eval-world (workbench/cli/world.py)."""
    p = add_verb("train-world", help="train the world model on the rendered world")
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
    p.set_defaults(func=world.cmd_train_world)

    p = add_verb("eval-world", help="score world-model rollouts against the renderer")
    p.add_argument("--model", default=None, help="checkpoint folder (default: the shipped one)")
    p.add_argument("--episodes", type=int, default=4, help="episodes per script kind")
    p.add_argument("--steps", type=int, default=8, help="rollout length")
    p.add_argument("--timesteps", type=int, default=10, help="denoising steps per frame")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("world-eval"))
    p.add_argument("--resolution", type=int, default=64, help="frame side the world is rendered at")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (bfloat16) for a large model")
    p.set_defaults(func=world.cmd_eval_world)

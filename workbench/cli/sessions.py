"""`workbench replay` and `workbench export`: saved sessions, checked and exported."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.cli.common import EXIT_FAILED, EXIT_OK, cluster, load_model, model_path

if TYPE_CHECKING:
    from bagel.pipeline import BagelPipeline


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
    from workbench.store.session_format import read_transcript

    manifest = read_transcript(folders[0])  # device and dtype; each replay checks it all
    device = args.device or manifest.get("device") or "cpu"
    replicas = cluster(args, device)
    dtype = args.dtype or manifest.get("dtype")
    results = replay_sessions(folders, model_path(args.model), dtype, replicas)
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
    from workbench.store.session_format import read_transcript

    # device and dtype only: the command's own reader checks what it needs, once
    manifest = read_transcript(folder)
    device = args.device or manifest.get("device") or "cpu"
    profile = args.profile or _quantised_kind(manifest.get("profile"))
    dtype = args.dtype or (None if args.profile else manifest.get("dtype"))
    return load_model(args.model, device, dtype, profile, args.compile)


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

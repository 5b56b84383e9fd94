"""The same navigate move in the main thread and in a fresh thread (as an app job runs).

    .venv/bin/python bench/bench_job_thread.py [--steps 50] [--size 128] [--reps 2]

Tiny random checkpoint, float32, CPU. Each rep: three moves in the main thread, then
three in a new thread, then three in a new thread that first calls
`torch.set_num_threads` again. Run it with OMP_WAIT_POLICY=PASSIVE or ACTIVE to see how
OpenMP's waiting changes the picture (docs/benchmarks.md, the app section).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bagel.checkpoint import load  # noqa: E402
from bagel.tiny import make_tiny  # noqa: E402
from workbench import chains  # noqa: E402
from workbench.params import GenerationParams  # noqa: E402
from workbench.session import Session  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pipe = load(make_tiny(Path(tmp) / "tiny"), dtype="float32")
        params = GenerationParams(num_timesteps=args.steps, height=args.size, width=args.size)
        session = Session(pipe)
        session.add_text("a quiet street at dawn")
        session.generate_image(params)

        def moves(out: list[float], threads: int | None = None) -> None:
            if threads is not None:
                torch.set_num_threads(threads)
            for _ in range(3):
                started = time.perf_counter()
                chains.navigate(session, ["forward"], params)
                out.append(time.perf_counter() - started)

        print(f"torch threads {torch.get_num_threads()}; seconds per move")
        for _ in range(args.reps):
            for name, threads, in_thread in (
                ("main thread", None, False),
                ("new thread", None, True),
                ("new thread, set_num_threads", torch.get_num_threads(), True),
            ):
                out: list[float] = []
                if in_thread:
                    worker = threading.Thread(target=moves, args=(out, threads))
                    worker.start()
                    worker.join()
                else:
                    moves(out)
                print(f"{name:<30}" + " ".join(f"{s:.2f}" for s in out))


if __name__ == "__main__":
    main()

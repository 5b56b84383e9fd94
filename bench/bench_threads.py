"""World moves from the command line next to busy cores: the thread policy against
torch's own default (every core).

    .venv/bin/python bench/bench_threads.py [--moves 5] [--reps 3]

Writes a scenario of `--moves` world moves on models/world-64 (64×64, 10 timesteps),
then runs `workbench run` on it as a person would, in a fresh process each time, with 0,
1 and 2 cores kept busy by spinning processes started here, and reads the seconds the
command prints for the scenario. Each setting runs with the default thread count (the
policy in workbench/threads.py) and with `--threads N`, N the machine's cores (torch's own
default before the policy). Prints the median of `--reps` runs and each one's ratio to the
idle run of the same threads, all in one process so that the ratios share the machine's
state. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "world-64"
SCENARIO = """\
model: {model}
seed: 1
defaults:
  num_timesteps: 10
  timestep_shift: 2.0
  cfg_text_scale: 1.0
  cfg_img_scale: 1.0
  height: 64
  width: 64
start:
  image: {image}
steps:
  - navigate:
      actions: {actions}
"""
ACTIONS = ["forward", "turn_left", "forward", "turn_right", "look_up", "look_down", "back"]


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def _run(scenario: Path, out: Path, threads: int | None) -> float:
    command = [sys.executable, "-m", "workbench", "run", str(scenario), "--out", str(out)]
    if threads is not None:
        command += ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    found = re.search(r"(\d+) frames in ([0-9.]+) s", done.stdout)
    if found is None:
        raise RuntimeError(f"no timing in the output:\n{done.stdout}\n{done.stderr}")
    return float(found.group(2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--moves", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    actions = [ACTIONS[i % len(ACTIONS)] for i in range(args.moves)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scenario = tmp / "moves.yaml"
        shutil.copy(ROOT / "scenarios" / "world" / "images" / "room.png", tmp / "room.png")
        scenario.write_text(SCENARIO.format(model=MODEL, image="room.png", actions=actions))
        results: dict[tuple[str, int], float] = {}
        for busy in range(cores + 1):
            stop = multiprocessing.Event()
            spinners = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(busy)]
            for p in spinners:
                p.start()
            try:
                for label, threads in (("policy", None), (f"--threads {cores}", cores)):
                    times = [
                        _run(scenario, tmp / f"out-{busy}-{threads}-{k}", threads)
                        for k in range(args.reps)
                    ]
                    results[label, busy] = statistics.median(times)
                    print(f"busy {busy}, {label}: {times}", flush=True)
            finally:
                stop.set()
                for p in spinners:
                    p.join()
    print(f"\n{args.moves} world moves (`workbench run`), median of {args.reps}, {cores} cores")
    print("| threads | " + " | ".join(f"{b} busy (s, × idle)" for b in range(cores + 1)) + " |")
    print("|---" * (cores + 2) + "|")
    for label in ("policy", f"--threads {cores}"):
        idle = results[label, 0]
        cells = [
            f"{results[label, b]:.2f} ({results[label, b] / idle:.2f}×)" for b in range(cores + 1)
        ]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

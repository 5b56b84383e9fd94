"""Scenario files fanned out over Ray replicas: 1 vs 2 actors on a local cluster.

    .venv/bin/python bench/bench_ray.py [--files 8] [--cpus 2] [--steps 4] [--size 64]

Writes `--files` small scenario files (an input image, then a 3-action navigate chain;
each its own seed) and a tiny checkpoint into a temporary folder, starts Ray with
`ray.init(num_cpus=--cpus)` (not timed), then runs every file with
`workbench.fanout.run_scenarios` on 1 replica and on 2 replicas (1 CPU and so 1 torch
thread each). The wall time of each includes starting the replicas and loading the model
in each. Then the same files run locally, one after another, in this process at one torch
thread (the thread count of a replica: CPU float sums depend on it), and every frame of
every session is compared with both Ray runs. Nothing is asserted on time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bagel.checkpoint import load  # noqa: E402
from bagel.tiny import make_tiny  # noqa: E402
from workbench.fanout import Cluster, run_scenarios  # noqa: E402
from workbench.scenario.read import load_scenario  # noqa: E402
from workbench.scenario.run import run_scenario  # noqa: E402

SCENARIO = """\
seed: {seed}
defaults:
  num_timesteps: {steps}
  height: {size}
  width: {size}
start:
  image: street.png
steps:
  - navigate: {{actions: [forward, turn_left, forward]}}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = make_tiny(tmp / "tiny", seed=0)
        files = _scenarios(tmp / "in", args)
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        walls, outs = {}, {}
        for actors in (1, 2):
            out = tmp / f"ray{actors}"
            items = [(f, out / f.stem) for f in files]
            started = time.perf_counter()
            results = run_scenarios(items, str(tiny), "float32", Cluster(actors=actors))
            walls[actors], outs[actors] = time.perf_counter() - started, out
            failed = [r.item for r in results if not r.ok]
            print(f"{actors} actor(s): {walls[actors]:.1f} s, {len(failed)} failed", flush=True)
        ray.shutdown()
        local_wall, same = _local(tiny, files, tmp / "local", outs)
    print(f"\nfiles: {args.files}, Ray CPUs: {args.cpus}, frames per file: 3")
    print(f"1 actor   {walls[1]:7.1f} s")
    print(f"2 actors  {walls[2]:7.1f} s   speed-up {walls[1] / walls[2]:.2f}x")
    print(f"local, one process at 1 thread (no Ray): {local_wall:.1f} s")
    print(f"frames equal to the local run: {same}")


def _scenarios(folder: Path, args) -> list[Path]:
    folder.mkdir(parents=True)
    Image.open(ROOT / "scenarios" / "images" / "street.png").save(folder / "street.png")
    files = []
    for k in range(args.files):
        path = folder / f"walk{k}.yaml"
        path.write_text(SCENARIO.format(seed=k, steps=args.steps, size=args.size))
        files.append(path)
    return files


def _local(tiny: Path, files: list[Path], out: Path, ray_outs: dict) -> tuple[float, str]:
    torch.set_num_threads(1)
    started = time.perf_counter()
    pipe = load(tiny, device="cpu", dtype="float32")
    for f in files:
        run_scenario(load_scenario(f), pipe, out / f.stem)
    wall = time.perf_counter() - started
    compared = differ = 0
    for f in files:
        mine = _frames(out / f.stem)
        for other in ray_outs.values():
            theirs = _frames(other / f.stem)
            compared += len(mine)
            differ += sum(a != b for a, b in zip(mine, theirs, strict=True))
    return wall, f"{compared - differ} of {compared} images identical"


def _frames(folder: Path) -> list[bytes]:
    return [Image.open(p).tobytes() for p in sorted((folder / "session" / "images").glob("*.png"))]


if __name__ == "__main__":
    main()

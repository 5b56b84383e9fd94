"""Cost of the non-finite weight scan that `bagel.load` runs after assigning the weights.

    .venv/bin/python bench/bench_finite_scan.py [--elements 134217728] [--reps 5]

What is measured, in one process on one tensor of `--elements` values (bf16, then
float32), median of interleaved repetitions:

- scan: `bagel.checkpoint.has_nonfinite` (min and max per 16 Mi-element chunk, the
  check `check_finite` makes on every weight);
- copy: `tensor.clone()` — one read and one write of the same bytes, the least the load
  itself does per weight (read from the memory-mapped file, convert, place).

It prints the scan's throughput, its ratio to the copy, and the scan time this gives
for the 7B release (ema.safetensors: 14.60 B bf16 values; ae.safetensors: 83.8 M
float32), on this machine's CPU. Nothing is asserted on time.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bagel.checkpoint import has_nonfinite  # noqa: E402
from bench.common import time_modes  # noqa: E402

RELEASE_EMA_VALUES = 14.60e9  # bf16
RELEASE_AE_VALUES = 83.8e6  # float32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--elements", type=int, default=1 << 27)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()}")
    seconds_per_value = {}
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(args.elements, generator=torch.Generator().manual_seed(0)).to(dtype)
        assert not has_nonfinite(x)
        ms = time_modes(
            {"scan": lambda x=x: has_nonfinite(x), "copy": lambda x=x: x.clone()},
            reps=args.reps,
            warmup=1,
        )
        gbs = x.numel() * x.element_size() / ms["scan"] / 1e6
        seconds_per_value[dtype] = ms["scan"] / 1e3 / x.numel()
        print(
            f"{str(dtype):15} {x.numel():>11} values: scan {ms['scan']:8.1f} ms "
            f"({gbs:5.2f} GB/s), copy {ms['copy']:8.1f} ms, scan/copy {ms['scan'] / ms['copy']:.2f}"
        )
    ema = RELEASE_EMA_VALUES * seconds_per_value[torch.bfloat16]
    ae = RELEASE_AE_VALUES * seconds_per_value[torch.float32]
    print(f"7B release on this CPU: ema {ema:.1f} s + ae {ae:.2f} s = {ema + ae:.1f} s of scan")


if __name__ == "__main__":
    main()

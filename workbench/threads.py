"""How many torch CPU threads a process takes: one policy for the CLI, the app, the server
and Ray's replicas.

torch's CPU kernels run a team of threads that wait for each other at every operation; a
team larger than the cores left free spins against whatever else runs there (another
process, a browser, a second replica): 5 world moves took 22–29 s with 2 threads next to a
busy core and about 1 s with 1 (docs/benchmarks.md). So the default is the cores that are
neither busy now nor kept for other work, shared between the replicas on this machine.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from bagel.errors import InputError

_STAT = Path("/proc/stat")


def machine_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def busy_cores(seconds: float = 0.1) -> float:
    """Cores kept busy by other work over a short look (0 where /proc/stat cannot tell)."""
    first = _cpu_times()
    if first is None:
        return 0.0
    time.sleep(seconds)
    second = _cpu_times()
    if second is None:
        return 0.0
    total = second[0] - first[0]
    idle = second[1] - first[1]
    if total <= 0:
        return 0.0
    return (os.cpu_count() or 1) * (total - idle) / total


def _cpu_times() -> tuple[int, int] | None:
    """(all jiffies, idle + iowait jiffies) of the whole machine."""
    try:
        fields = _STAT.read_text().split("\n", 1)[0].split()[1:]
        ticks = [int(f) for f in fields]
    except (OSError, ValueError):
        return None
    return sum(ticks[:8]), ticks[3] + (ticks[4] if len(ticks) > 4 else 0)


def default_threads(workers: int = 1, keep: int = 0) -> int:
    """Threads for each of `workers` processes sharing this machine: the cores not busy
    now, less `keep` cores left for other work (the app keeps one for the browser), split
    evenly; at least one."""
    free = machine_cores() - round(busy_cores()) - keep
    return max(1, free // max(1, workers))


def check_threads(threads: int | None) -> int | None:
    """A thread count a person asked for, refused with a message when it is not usable."""
    if threads is not None and threads < 1:
        raise InputError(f"the thread count must be at least 1, not {threads}")
    return threads


def use_threads(threads: int | None, workers: int = 1, keep: int = 0) -> int:
    """Set this process's torch CPU threads (the default policy when None); returns it.
    A saved turn records the count it ran with, so a replay runs it the same way."""
    chosen = check_threads(threads) or default_threads(workers, keep)
    torch.set_num_threads(chosen)
    return chosen

"""The thread policy shared by the CLI, the app, the server and Ray (workbench/threads.py)."""

from __future__ import annotations

import pytest
import torch

from bagel.errors import InputError
from workbench import threads


class _Stat:
    """A fake /proc/stat whose first line is each given line in turn."""

    def __init__(self, *lines: str):
        self.lines = iter(lines)

    def read_text(self) -> str:
        return next(self.lines) + "\ncpu0 1 2 3\n"


def test_busy_cores_reads_the_share_of_non_idle_time(monkeypatch):
    # 400 jiffies pass, 100 of them idle (+ iowait): 3/4 of the machine's cores busy
    first = "cpu  100 0 100 1000 0 0 0 0 0 0"
    second = "cpu  250 0 250 1080 20 0 0 0 0 0"
    monkeypatch.setattr(threads, "_STAT", _Stat(first, second))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    assert threads.busy_cores(0) == pytest.approx(3.0)


def test_busy_cores_is_zero_where_the_machine_cannot_tell(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "_STAT", tmp_path / "missing")
    assert threads.busy_cores(0) == 0.0


@pytest.mark.parametrize(
    ("cores", "busy", "workers", "keep", "expected"),
    [
        (2, 0.0, 1, 0, 2),  # an idle machine: every core
        (2, 1.0, 1, 0, 1),  # one core busy elsewhere: the other one
        (2, 2.0, 1, 0, 1),  # all busy: still one
        (8, 1.2, 1, 1, 6),  # the app keeps one for the browser
        (8, 0.0, 2, 0, 4),  # two replicas share the free cores
        (2, 0.0, 2, 0, 1),  # two replicas on two cores: one each
        (2, 0.0, 4, 0, 1),
    ],
)
def test_default_threads_takes_the_free_cores_shared_by_the_workers(
    monkeypatch, cores, busy, workers, keep, expected
):
    monkeypatch.setattr(threads, "machine_cores", lambda: cores)
    monkeypatch.setattr(threads, "busy_cores", lambda seconds=0.1: busy)
    assert threads.default_threads(workers, keep) == expected


def test_use_threads_sets_torch_and_refuses_zero(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert threads.use_threads(1) == 1
        assert torch.get_num_threads() == 1
        monkeypatch.setattr(threads, "default_threads", lambda workers=1, keep=0: 3)
        assert threads.use_threads(None) == 3
        assert torch.get_num_threads() == 3
        with pytest.raises(InputError, match="at least 1"):
            threads.use_threads(0)
    finally:
        torch.set_num_threads(before)

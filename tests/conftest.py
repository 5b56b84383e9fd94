"""Shared fixtures: one tiny random checkpoint per test session, loaded in float32."""

from __future__ import annotations

import pytest
import torch

from bagel.checkpoint import load
from bagel.tiny import make_tiny


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """A command run in-process sets the process's torch threads (workbench/threads.py):
    put them back so that no test runs on another test's count."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0)


@pytest.fixture(scope="session")
def pipe(tiny_dir):
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return load(tiny_dir, device="cpu", dtype="float32")

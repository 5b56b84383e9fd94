"""The profile benchmarks' code paths on the CPU (no figures are checked: they print)."""

from __future__ import annotations

import json
import sys

import torch

from bagel.config import BagelConfig
from bagel.model import Bagel
from bagel.profiles import Profile, weight_bytes
from bench import bench_gpu_profiles
from bench.bench_profiles import materialise


def test_gpu_profiles_smoke_runs_the_whole_matrix(tmp_path, monkeypatch, capsys):
    out = tmp_path / "rows.json"
    monkeypatch.setattr(sys, "argv", ["bench_gpu_profiles.py", "--smoke", "--json", str(out)])
    with torch.no_grad():  # main() turns gradients off for the process: restored on exit
        bench_gpu_profiles.main()
    rows = json.loads(out.read_text())
    combos = {(r["profile"], r["task"], r["cache"]) for r in rows}
    assert len(combos) == len(rows) == 3 * 2 * 2
    assert all(r["seconds"] > 0 for r in rows)


def test_materialised_model_holds_the_bytes_the_shapes_predict():
    config = BagelConfig.tiny()
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Bagel(config).state_dict().items()}
    net = materialise(config, Profile("int8"), torch.float32)
    other, layers = weight_bytes(shapes, "int8", torch.float32)
    held = sum(t.numel() * t.element_size() for t in net.parameters())
    scb = [getattr(getattr(m, "weight", None), "SCB", None) for m in net.modules()]
    scales = sum(s.numel() * s.element_size() for s in scb if s is not None)
    assert held + scales == other + sum(layers)

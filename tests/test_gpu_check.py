"""The GPU check's smoke path (scripts/gpu-check.sh --smoke): every section's code runs on
the CPU and writes its rows; and how rows report a missing package, the time budget and
a non-finite figure. No figure is checked: they are the device run's to report."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from bench import gpu_check

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ["a. correctness", "b. 7B", "c. interactive", "d. profiler"]
# what the CPU cannot run, each with the reason it gives
SKIPPED = {
    "offload": "streams CPU-held weights onto a GPU",
    "int8+offload": "streams CPU-held weights onto a GPU",
    "compiled (bf16)": "compiling on the CPU",
    "fp32 compiled t2i": "compiling on the CPU",
    "offload t2i": "streams CPU-held weights onto a GPU",
}


def test_smoke_run_writes_every_section(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu-check.sh"), "--smoke", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = (out / "results.json").read_text()
    assert "NaN" not in text
    rows = json.loads(text)["rows"]
    assert list(dict.fromkeys(r["section"] for r in rows)) == SECTIONS
    checks = {r["check"]: r for r in rows}
    expected = ["bf16", "int8", "nf4", "TaylorSeer (bf16)", "replay twice", "fp32 t2i"]
    expected += ["fp32 t2i, TaylorSeer", "int8 t2i", "nf4 t2i", "fp32 edit", "text generation"]
    for check in expected:
        assert checks[check]["status"] == "ok", checks[check]
    assert checks["navigation 64²"]["frames_per_second"] > 0
    for check, reason in SKIPPED.items():
        assert checks[check]["status"] == "skipped" and reason in checks[check]["note"]
    assert {r["status"] for r in rows} == {"ok", "skipped"}, [r for r in rows if r["status"]]
    for name in ("bf16", "int8", "nf4"):  # an error against fp32 was measured, not a copy
        assert 0 < checks[name]["latent_rel_error"] < float(checks[name]["bound"][2:])
    table = (out / "results.md").read_text().splitlines()
    assert "| section | check | figure | bound or goal | status | note |" in table
    assert sum(line.startswith("| ") for line in table) == len(rows) + 1
    assert "NaN" not in "\n".join(table)
    profiled = [r for r in rows if r["section"] == "d. profiler"]
    assert (out / "profiler.txt").read_text().count("\n## ") + 1 == len(profiled) > 0
    assert (out / "run.log").exists()


def test_rows_report_missing_packages_time_and_non_finite_figures(tmp_path, monkeypatch):
    plan = gpu_check.Plan.make(smoke=True)
    results = gpu_check.Results(tmp_path, {"mode": "test"}, minutes=10)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )  # fmt: skip
    gpu_check.attempt(results, "b. 7B", "int8 t2i", lambda: gpu_check.build(plan, "int8", tmp_path))
    results.add("a. correctness", "bf16", "", "< 0.02", "ok", "", latent_rel_error=float("nan"))
    results.deadline = 0  # spent: the next cell does not start
    gpu_check.attempt(results, "c. interactive", "text", lambda: 1 / 0)
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert rows[0]["status"] == "skipped" and "needs the bitsandbytes package" in rows[0]["note"]
    assert rows[1]["status"] == "fail" and rows[1]["latent_rel_error"] == "NaN"
    assert rows[2]["status"] == "skipped" and rows[2]["note"] == "time budget spent"
    results.deadline = float("inf")
    gpu_check.attempt(results, "c. interactive", "text", lambda: 1 / 0)
    assert results.rows[-1]["status"] == "error"
    assert results.rows[-1]["note"] == "ZeroDivisionError: division by zero"

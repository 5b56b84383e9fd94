"""`workbench run --ray` and `workbench replay --ray` on a local Ray cluster of two CPUs
(one module-scoped cluster: Ray starts slowly), and the error without Ray.

Frames are compared with a local run at one torch thread, the thread count of a one-CPU
replica: CPU float sums depend on how the work is split over threads, so a different
count can move a pixel by one level (docs/serve.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from workbench.cli.main import main
from workbench.scenario.read import load_scenario
from workbench.scenario.run import run_scenario

ROOT = Path(__file__).resolve().parent.parent
HEAD = """\
seed: 1
defaults:
  num_timesteps: 2
  height: 64
  width: 64
start:
  image: street.png
"""
SCENARIOS = {
    "walk": HEAD + "steps:\n  - navigate: {actions: [forward, turn_left]}\n",
    "turn": HEAD + "steps:\n  - rotate: {degrees: 90, steps: 2}\n",
    "look": HEAD + "steps:\n  - navigate: {actions: [look_up]}\n",
}


def _scenarios(folder: Path, names: list[str]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    Image.open(ROOT / "scenarios" / "images" / "street.png").save(folder / "street.png")
    for name in names:
        (folder / f"{name}.yaml").write_text(SCENARIOS[name])
    return [str(folder / f"{name}.yaml") for name in names]


@pytest.fixture(scope="module")
def cluster():
    import ray  # the dev extra installs it

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _images(folder: Path) -> list[bytes]:
    return [Image.open(p).tobytes() for p in sorted((folder / "session" / "images").glob("*.png"))]


def test_run_and_replay_on_two_replicas_equal_the_local_run(
    cluster, tiny_dir, pipe, tmp_path, capsys
):
    paths = _scenarios(tmp_path / "in", ["walk", "turn", "look"])
    out = tmp_path / "ray"
    code = main(
        ["run", *paths, "--model", str(tiny_dir), "--out", str(out), "--ray", "--actors", "2"]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    for name in ("walk", "turn", "look"):
        assert name in printed
        assert (out / name / "run.json").is_file() and (out / name / "export").is_dir()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for path in paths:
            local = tmp_path / "local" / Path(path).stem
            run_scenario(load_scenario(path), pipe, local)
            assert _images(local) == _images(out / Path(path).stem), path
    finally:
        torch.set_num_threads(threads)

    # an item that fails is reported (exit code 1); the others finish
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "session.json").write_text("{}")
    folders = [str(out / name / "session") for name in ("walk", "turn", "look")]
    assert main(["replay", *folders, str(broken), "--model", str(tiny_dir), "--ray"]) == 1
    captured = capsys.readouterr()
    assert captured.out.count(": identical; report: ") == 3
    assert f"error: {broken}" in captured.err and "not a bagel-workbench-session" in captured.err


def test_more_replicas_than_the_cluster_holds_are_refused(cluster, tiny_dir, tmp_path, capsys):
    paths = _scenarios(tmp_path, ["look"])
    code = main(
        [
            "run",
            *paths,
            "--model",
            str(tiny_dir),
            "--out",
            str(tmp_path / "o"),
            "--ray",
            "--actors",
            "3",
        ]
    )
    assert code == 2 and "3 replicas do not fit" in capsys.readouterr().err


def test_without_ray_installed_ray_runs_say_how_to_get_it(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    paths = _scenarios(tmp_path, ["look"])
    assert main(["run", *paths, "--out", str(tmp_path / "o"), "--ray"]) == 2
    assert "pip install 'bagel-workbench[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "o" / "look" / "session").exists()


def test_a_run_without_ray_does_not_import_it(tiny_dir, tmp_path):
    paths = _scenarios(tmp_path, ["look"])
    code = (
        "import sys; from workbench.cli.main import main; "
        f"assert main(['run', {paths[0]!r}, '--model', {str(tiny_dir)!r}, '--out', {str(tmp_path / 'o')!r}]) == 0; "
        "assert 'ray' not in sys.modules, 'ray was imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)

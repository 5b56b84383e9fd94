import json

import numpy as np
import pytest
import torch
from PIL import Image

from bagel.checkpoint import load
from workbench.cli.main import main
from workbench.world.data import future
from workbench.world.eval import (
    EVAL_STREAM,
    MOVING_LEVEL,
    REVISIT_BACK,
    REVISIT_OUT,
    WORLD_MODEL,
    evaluate,
    evaluate_autoencoder,
    evaluate_navigation,
    frame_scores,
    markdown,
    summary,
    world_params,
    write_report,
)
from workbench.world.model import default_world_model


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_eval_world_scores_every_chain_and_writes_table_and_plot(pipe, tmp_path):
    strips = {}
    report = evaluate(pipe, episodes=1, steps=2, timesteps=2, strips=strips)
    nav = report["navigation"]
    assert set(nav) == {"walk-and-turn", "look-around", "random-walk", "unseen-level"}
    for kind in nav.values():
        assert len(kind["model"]["psnr"]) == 2 and len(kind["copy"]["ssim"]) == 2
    methods = {"autoregressive", "forcing-w2", "forcing-w4", "copy", "autoencoder"}
    assert set(report["future"]) == methods
    # the ceiling row: the first true future frame through the autoencoder
    truth = Image.fromarray(future(np.random.default_rng([EVAL_STREAM, 99, 0]), 4).frames[2])
    decoded = pipe.decode_latent(pipe.encode_latent(truth, torch.Generator().manual_seed(0)))
    ceiling = report["future"]["autoencoder"]["psnr"][0]
    assert ceiling == pytest.approx(frame_scores(decoded, truth)[0], abs=1e-3)
    # the moving pixels: where the true frame differs from the last context frame
    frames = future(np.random.default_rng([EVAL_STREAM, 99, 0]), 4).frames
    true, last = frames[2] / 255, frames[1] / 255
    moving = np.abs(true - last).max(axis=-1) > MOVING_LEVEL
    assert 0 < moving.mean() < 0.5  # the ball moved, the room did not
    for method, image in (("copy", last), ("autoencoder", np.asarray(decoded) / 255)):
        expected = 10 * np.log10(1 / ((image - true)[moving] ** 2).mean())
        assert report["future"][method]["moving_psnr"][0] == pytest.approx(expected, abs=1e-3)
    assert "moving_psnr" not in nav["walk-and-turn"]["model"]
    assert report["revisit"]["actions"] == REVISIT_OUT + REVISIT_BACK
    # random weights: the copy baseline wins on the future frames of a rolling ball
    assert report["future"]["copy"]["psnr"][0] > report["future"]["autoregressive"]["psnr"][0]
    paths = write_report(report, tmp_path / "eval", strips)
    names = ["world-eval.json", "world-eval.md", "world-eval.png", "world-eval-strip.png"]
    assert [p.name for p in paths] == names
    assert Image.open(paths[3]).size == (3 * 64, 8 * 64)  # 4 kinds x (truth, model)
    assert json.loads(paths[0].read_text())["steps"] == 2
    assert "| future frames | forcing-w4 |" in paths[1].read_text()
    assert "PSNR over the pixels that moved" in paths[1].read_text()
    assert "in the 1 of 1 episodes where something moved" in paths[1].read_text()
    assert Image.open(paths[2]).size == (720, 420)
    assert markdown(report) == paths[1].read_text()


def test_moved_frames_are_scored_apart_from_still_ones():
    """A future frame in which nothing moved (the ball out of view) is one copying gets
    exactly: the figures "where something moved" leave such runs out."""
    runs = [
        {"psnr": [20.0, 18.0], "ssim": [0.9, 0.8], "moving_psnr": [12.0, None]},
        {"psnr": [60.0, 22.0], "ssim": [1.0, 0.9], "moving_psnr": [None, 14.0]},
        {"psnr": [26.0, 30.0], "ssim": [0.9, 0.9], "moving_psnr": [16.0, 10.0]},
    ]
    s = summary(runs)
    assert s["psnr"] == [pytest.approx(106 / 3, abs=1e-3), pytest.approx(70 / 3, abs=1e-3)]
    assert s["moved_runs"] == [2, 2]
    assert s["psnr_moved_frames"] == [23.0, 26.0]
    assert s["moving_psnr"] == [14.0, 12.0]
    assert "moved_runs" not in summary([{"psnr": [1.0], "ssim": [0.5]}])


def test_eval_world_command_refuses_bad_counts(tmp_path, capsys):
    code = main(["eval-world", "--episodes", "0", "--out", str(tmp_path / "x")])
    assert code == 2 and "--episodes" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_train_world_command_refuses_bad_counts(tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["train-world", str(out), "--steps", "-1"]) == 2
    assert "steps must be a non-negative integer" in capsys.readouterr().err
    assert main(["train-world", str(out), "--threads", "0"]) == 2
    assert main(["train-world", str(out), "--ae-lr", "0"]) == 2
    assert "ae_lr must be a positive learning rate" in capsys.readouterr().err
    assert main(["train-world", str(out), "--lr", "nan"]) == 2
    assert "lr must be a positive" in capsys.readouterr().err
    assert main(["train-world", str(out), "--device", "tpu"]) == 2
    assert "device must be cpu or cuda" in capsys.readouterr().err
    assert main(["train-world", str(out), "--render-workers", "-1"]) == 2
    assert "render_workers must be a non-negative integer" in capsys.readouterr().err
    assert not out.exists()


def _navigation_means(pipe) -> dict[str, tuple[float, float]]:
    """Per navigation kind, one episode of 4 actions: (model, copy) mean PSNR."""
    kinds = evaluate_navigation(pipe, episodes=1, steps=4, params=world_params(10))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {k: (mean(v["model"]["psnr"]), mean(v["copy"]["psnr"])) for k, v in kinds.items()}


def test_the_shipped_world_model_beats_copying_where_random_weights_do_not(pipe):
    assert default_world_model() == WORLD_MODEL  # shipped and marked: demo and app use it
    shipped = load(WORLD_MODEL, device="cpu", dtype="float32")
    assert evaluate_autoencoder(shipped, 4)["psnr_mean"] >= 30  # the reconstruction goal
    assert evaluate_autoencoder(pipe, 4)["psnr_mean"] < 15
    trained, random = _navigation_means(shipped), _navigation_means(pipe)
    for kind, (model, copy) in trained.items():  # ahead of the start frame in every kind
        assert model > copy, kind
    overall = lambda means: sum(m - c for m, c in means.values()) / len(means)  # noqa: E731
    assert overall(trained) >= 2.0  # measured +4.3 dB at decoder step 13604
    assert overall(random) < 0  # noise: the same bound fails

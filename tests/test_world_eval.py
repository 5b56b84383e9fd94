import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from bagel.checkpoint import load
from workbench.cli.main import main
from workbench.world.accuracy import (
    action_right,
    evaluate_actions,
    gap_closed,
    one_step_truths,
    path_results,
    path_summary,
    tally,
)
from workbench.world.data import draw_world, future
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
    summary,
    world_params,
)
from workbench.world.eval_report import markdown, write_report
from workbench.world.model import default_world_model
from workbench.world.render import Pose, World, make_level


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
    per_action = report["actions"]["per_action"]
    assert sum(a["counted"] + a["left_out"] for a in per_action.values()) == 8
    assert nav["random-walk"]["path_accuracy"] == {}  # 2 steps: no path of 4 or 8
    moved = {m: s["psnr_moved_frames"][0] for m, s in report["future"].items()}
    assert moved["autoencoder"] < moved["copy"]  # random weights: below copying, ...
    assert report["gap_closed"] is None  # ... so there is no gap to close
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
    assert main(["eval-world", "--device", "tpu", "--out", str(tmp_path / "x")]) == 2
    assert "the device must be cpu or cuda" in capsys.readouterr().err
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
    # action accuracy on three fixed start views (24 one-step predictions)
    worlds = [draw_world(np.random.default_rng([EVAL_STREAM, 33, e])) for e in range(3)]
    actions = lambda p: evaluate_actions(p, worlds, world_params(10), 64)["accuracy"]  # noqa: E731
    assert actions(shipped) >= 0.6  # measured 19 of 24 (turn left 1 of 3, strafe left 1 of 3)
    assert actions(pipe) < 0.6  # random weights: 3 of 24 (look down, always)


def _frames(*levels: int) -> list[np.ndarray]:
    """Hand-built 8 × 8 frames, flat grey at each level."""
    return [np.full((8, 8, 3), level, np.uint8) for level in levels]


def test_action_accuracy_counts_the_nearest_true_frame_and_leaves_blocked_moves_out():
    fwd, left, right, stay = _frames(10, 100, 200, 150)
    truths = {"forward": fwd, "turn_left": left, "turn_right": right, "back": stay}
    assert action_right(fwd, truths, "forward", set()) is True  # its own truth
    assert action_right(left, truths, "forward", set()) is False  # another action's
    assert action_right(fwd + 30, truths, "forward", set()) is True  # nearer its own
    assert action_right(fwd + 60, truths, "forward", set()) is False  # nearer turn left
    assert action_right(fwd, truths, "forward", {"forward"}) is None  # blocked: left out
    # another action whose truth equals the commanded one's is no rival
    same = {**truths, "strafe_left": fwd.copy()}
    assert action_right(fwd, same, "forward", set()) is True
    assert action_right(fwd, same, "strafe_left", set()) is True
    results = [
        ("forward", action_right(fwd, truths, "forward", set())),
        ("turn_left", action_right(right, truths, "turn_left", set())),
        ("back", action_right(stay, truths, "back", {"back"})),
    ]
    t = tally(results)
    assert (t["right"], t["counted"], t["left_out"], t["accuracy"]) == (1, 2, 1, 0.5)
    assert t["per_action"]["forward"]["accuracy"] == 1.0
    assert t["per_action"]["turn_left"]["right"] == 0
    assert t["per_action"]["back"] == {"right": 0, "counted": 0, "left_out": 1, "accuracy": None}


def test_path_accuracy_and_the_gap_closed():
    own, *others = _frames(50, 0, 100, 150, 200, 250, 20, 80)
    truth = [np.zeros_like(own)] * 3 + [own]  # the true frames of 4 steps; the 4th counts
    assert path_results([None] * 3 + [own], truth, {4: others}) == {4: True}
    assert path_results([None] * 3 + [others[0]], truth, {4: others}) == {4: False}
    assert path_results([None] * 3 + [own + 12], truth, {4: others}) == {4: True}
    assert path_results([None] * 3 + [own + 18], truth, {4: others}) == {4: False}  # 80 nearer
    # another path that ends where the own one does is no rival
    assert path_results([None] * 3 + [own], truth, {4: [own.copy(), *others]}) == {4: True}
    assert path_summary([{4: True}, {4: False}, {4: True}]) == {"4": {"right": 2, "counted": 3}}
    assert gap_closed(25.3, 26.6, 32.1) == pytest.approx(-1.3 / 5.5, abs=1e-4)
    assert gap_closed(32.1, 26.6, 32.1) == 1.0
    assert gap_closed(30.0, 26.6, 26.0) is None and gap_closed(None, 26.6, 32.1) is None


def test_a_move_into_a_wall_is_blocked():
    level = make_level(0)
    world = World(level, Pose(1.6, 3.5, heading=math.pi))  # facing the wall at x < 1
    truths, blocked = one_step_truths(world, 64)
    assert "forward" in blocked and not blocked & {"back", "turn_left", "look_up"}
    assert np.array_equal(truths["forward"], world.step(None).render())
    assert not np.array_equal(truths["back"], truths["forward"])


def test_eval_world_at_another_resolution_runs_the_chains(tiny_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval-world", "--model", str(tiny_dir), "--episodes", "1", "--steps", "4"]
    args += ["--timesteps", "2", "--resolution", "128", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "world-eval.json").read_text())
    assert report["resolution"] == 128
    assert report["actions"]["counted"] + report["actions"]["left_out"] == 8
    assert report["navigation"]["random-walk"]["path_accuracy"]["4"]["counted"] == 1
    assert Image.open(out / "world-eval-strip.png").size == (5 * 128, 8 * 128)
    table = (out / "world-eval.md").read_text()
    assert "Action accuracy, one step from 1 start views" in table
    assert "Path accuracy after 4 actions" in table
    capsys.readouterr()
    assert main([*args[:-4], "--resolution", "100", "--out", str(tmp_path / "x")]) == 2
    assert "multiple of 16" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

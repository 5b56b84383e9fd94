"""The World page on a world model: which model runs, a start from the rendered world,
and each frame's PSNR / SSIM against the renderer's true frame (AppTest, tiny weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_app import _ok, app_test, current, settle  # the AppTest helpers

from bagel.checkpoint import checkpoint_identity, load
from bagel.tiny import make_tiny
from workbench import store
from workbench.app import session_models
from workbench.app.model import model_for_page
from workbench.app.world_truth import start_view, start_world, true_frames
from workbench.metrics import psnr, ssim
from workbench.session import Session
from workbench.world import model as world_model
from workbench.world.eval import PSNR_CAP


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    """A tiny random checkpoint marked as a world model (the rule train-world follows)."""
    folder = make_tiny(tmp_path_factory.mktemp("world") / "ckpt", seed=0)
    world_model.write_marker(folder)
    return folder


def _run_app(model: Path, tmp_path, monkeypatch) -> AppTest:
    monkeypatch.setenv("WORKBENCH_MODEL", str(model))
    monkeypatch.setenv("WORKBENCH_SESSIONS", str(tmp_path / "sessions"))
    at = app_test(monkeypatch)
    at.run()
    _ok(at)
    return at


def _truth_table(at: AppTest):
    tables = [d.value for d in at.table if "PSNR vs truth (dB)" in d.value.columns]
    assert len(tables) == 1
    return tables[0]


def _captions(elements) -> str:
    return " ".join(e.value for e in elements)


def test_the_random_default_says_its_frames_are_noise(tiny_dir, tmp_path, monkeypatch):
    at = _run_app(tiny_dir, tmp_path, monkeypatch)
    assert "random weights**: its frames are noise" in _captions(at.sidebar.caption)
    at.sidebar.radio(key="page").set_value("World").run()
    _ok(at)
    # not a world model: the page is as before (no rendered-world start, no truth)
    assert "world_start_view" not in [b.key for b in at.button]
    assert "world model" not in _captions(at.sidebar.caption).lower()


def test_world_model_starts_from_the_rendered_world_and_scores_against_truth(
    world_dir, tmp_path, monkeypatch
):
    at = _run_app(world_dir, tmp_path, monkeypatch)
    assert "**world model**" in _captions(at.sidebar.caption)
    at.sidebar.radio(key="page").set_value("World").run()
    at.number_input(key="world_seed").set_value(5).run()
    at.button(key="world_start_view").click()
    settle(at.run())
    at.button(key="move_turn_left").click()
    settle(at.run())
    at.button(key="move_forward").click()
    settle(at.run())
    branch = current(at, "world")
    assert [s.label for s in branch.shots] == ["start", "turn left", "forward"]
    # the truth, rendered here independently of the page
    world = start_world(5)
    truth = [world.render()]
    for action in ("turn_left", "forward"):
        world = world.step(action)
        truth.append(world.render())
    truth_images = [Image.fromarray(t) for t in truth]
    assert branch.shots[0].image.tobytes() == start_view(5).tobytes()
    table = _truth_table(at)
    assert list(table["frame"]) == [1, 2, 3]
    for row, shot, true in zip(table.itertuples(), branch.shots, truth_images, strict=True):
        expected_psnr = min(psnr(shot.image, true), PSNR_CAP)  # eval-world's figure
        assert row[3] == pytest.approx(round(expected_psnr, 3))
        assert row[4] == pytest.approx(round(ssim(shot.image, true), 4))
    assert table.iloc[0, 2] == PSNR_CAP  # the start frame is the true view itself
    assert table.iloc[1, 2] < 40  # random weights: a noise frame is far from the truth
    # the true frames are shown beside the model's
    captions = [c for image in at.get("image") for c in image.captions]
    assert [c for c in captions if c.endswith("true frame")] == [
        f"{k}. true frame" for k in (1, 2, 3)
    ]
    # undo drops the last frame and its truth
    at.button(key="world_undo").click().run()
    assert list(_truth_table(at)["frame"]) == [1, 2]
    # a fork keeps the truth; so does a reload that restores the autosaved branches
    at.button(key="world_fork").click().run()
    assert list(_truth_table(at)["frame"]) == [1, 2]
    expected = _truth_table(at)
    reloaded = app_test(monkeypatch)
    reloaded.query_params["ws"] = at.session_state["workspace_id"]
    reloaded.run()
    reloaded.sidebar.radio(key="page").set_value("World").run()
    reloaded.button(key="restore_0").click()
    settle(reloaded.run())
    for name in ("world-1", "world-2"):
        assert reloaded.session_state["workspace"].branches[name].truth_seed == 5
    assert _truth_table(reloaded).equals(expected)


def test_a_typed_path_walks_as_one_job_with_its_truth(world_dir, tmp_path, monkeypatch):
    at = _run_app(world_dir, tmp_path, monkeypatch)
    at.sidebar.radio(key="page").set_value("World").run()
    at.number_input(key="world_seed").set_value(2).run()
    at.button(key="world_start_view").click()
    settle(at.run())
    # a bad path: its reason in the form, no frame made, the text kept
    at.text_input(key="world_path_text").set_value("turn left, fly")
    at.button(key="world_path_go").click()
    settle(at.run())
    assert any("'fly' is not a move" in e.value for e in at.error)
    assert at.text_input(key="world_path_text").value == "turn left, fly"
    branch = current(at, "world")
    assert len(branch.shots) == 1
    at.text_input(key="world_path_text").set_value("turn left, forward x2")
    at.button(key="world_path_go").click()
    settle(at.run())
    branch = current(at, "world")
    assert [s.label for s in branch.shots] == ["start", "turn left", "forward", "forward"]
    expected = [s.label for s in branch.shots]
    world, truth = start_world(2), []
    for action in ("turn_left", "forward", "forward"):
        world = world.step(action)
        truth.append(Image.fromarray(world.render()).tobytes())
    assert [t.tobytes() for t in true_frames(2, expected)[1:]] == truth
    assert list(_truth_table(at)["frame"]) == [1, 2, 3, 4]
    # each move is a frame of its own: undo drops one
    at.button(key="world_undo").click().run()
    assert [s.label for s in current(at, "world").shots] == expected[:3]


def test_truth_replays_moves_and_ticks_and_stops_at_a_rotation():
    labels = ["start", "strafe left", "autoregressive t+1", "rotate 30°", "forward"]
    frames = true_frames(2, labels)
    world = start_world(2)
    expected = [world.render()]
    world = world.step("strafe_left")
    expected.append(world.render())
    world = world.step(None)  # a predicted frame: one tick, the camera still
    expected.append(world.render())
    assert [f.tobytes() for f in frames[:3]] == [Image.fromarray(e).tobytes() for e in expected]
    assert frames[3:] == [None, None]


def test_the_world_page_defaults_to_the_world_model_when_present(tmp_path, monkeypatch):
    monkeypatch.setattr(world_model, "WORLD_MODEL", tmp_path / "world-64")
    assert model_for_page("", "World") == ""  # absent: the tiny default, as before
    (tmp_path / "world-64").mkdir()
    assert model_for_page("", "World") == ""  # a folder without the marker is not one
    world_model.write_marker(tmp_path / "world-64")
    assert model_for_page("", "World") == str(tmp_path / "world-64")
    assert model_for_page("", "Story") == ""
    assert model_for_page(" /my/ckpt ", "World") == "/my/ckpt"  # asked for: always that


def test_a_tab_that_used_both_pages_restores_both_from_the_story_page(
    world_dir, tmp_path, monkeypatch
):
    """Story on the tiny default, World on the world model: a reload lands on the Story
    page, whose Restore brings back both branches, each on its own model."""
    monkeypatch.setattr(world_model, "WORLD_MODEL", world_dir)
    monkeypatch.delenv("WORKBENCH_MODEL", raising=False)
    monkeypatch.setenv("WORKBENCH_SESSIONS", str(tmp_path / "sessions"))
    at = app_test(monkeypatch)
    at.run()
    at.sidebar.number_input(key="knob_steps").set_value(2)
    at.sidebar.checkbox(key="knob_auto_size").uncheck()
    at.run()
    at.sidebar.number_input(key="knob_height").set_value(64)
    at.sidebar.number_input(key="knob_width").set_value(64)
    at.text_area(key="beat_text").set_value("a fox finds a lantern")
    at.button(key="FormSubmitter:beat_form-Add beat").click().run()
    at.button(key="story_generate").click()
    settle(at.run())
    at.sidebar.radio(key="page").set_value("World").run()
    at.button(key="world_start_view").click()
    settle(at.run())
    at.button(key="move_forward").click()
    settle(at.run())
    assert at.query_params["page"] == "world"  # a reload returns to it
    before = {n: (b.model, [s.image.tobytes() for s in b.shots]) for n, b in _branches(at)}
    assert before["world-1"][0] == str(world_dir) and before["story-1"][0] == ""

    reloaded = app_test(monkeypatch)
    reloaded.query_params["ws"] = at.session_state["workspace_id"]
    reloaded.run()  # no page in the address: the Story page
    _ok(reloaded)
    offer = " ".join(m.value for m in reloaded.markdown)
    assert "1 story (story-1: 1 frame) and 1 world (world-1: 2 frames)" in offer
    reloaded.button(key="restore_0").click()
    settle(reloaded.run())
    assert not reloaded.error
    after = {n: (b.model, [s.image.tobytes() for s in b.shots]) for n, b in _branches(reloaded)}
    assert after == before
    pipes = {n: b.session.pipe for n, b in _branches(at)}  # the process's loaded models
    assert pipes["world-1"] is not pipes["story-1"]
    assert all(b.session.pipe is pipes[n] for n, b in _branches(reloaded))
    reloaded.sidebar.radio(key="page").set_value("World").run()
    assert "2 frames" in _captions(reloaded.caption)


def _branches(at: AppTest):
    return at.session_state["workspace"].branches.items()


def test_a_saved_world_opens_on_its_own_model_asking_first_for_a_large_load(
    tiny_dir, tmp_path, monkeypatch
):
    """The Sessions page opens a world saved on the world model on that model (found by
    its checkpoint identity), not on the page's; a large load is asked for first."""
    own = make_tiny(tmp_path / "world", seed=0)
    config = own / "llm_config.json"
    config.write_text(config.read_text() + "\n")  # another identity than the tiny one's
    world_model.write_marker(own)
    session = Session(load(own, device="cpu", dtype="float32"))
    session.add_image(start_view(0))
    store.save(session, tmp_path / "sessions" / "my-world")
    monkeypatch.setattr(world_model, "WORLD_MODEL", own)
    monkeypatch.setattr(session_models, "LARGE_LOAD_BYTES", 0)  # every model counts as large
    at = _run_app(tiny_dir, tmp_path, monkeypatch)
    at.sidebar.radio(key="page").set_value("Sessions").run()
    at.radio(key="open_source").set_value("the saved sessions").run()
    at.button(key="open").click().run()
    _ok(at)
    assert any("my-world was made with the world model" in w.value for w in at.warning)
    at.button(key="open_load").click()
    settle(at.run())
    assert any("Opened my-world as **world-1** on the World page" in s.value for s in at.success)
    branch = at.session_state["workspace"].branches["world-1"]
    assert branch.model == str(own) and branch.session.pipe.identity == checkpoint_identity(own)
    at.sidebar.radio(key="page").set_value("World").run()
    at.button(key="move_forward").click()
    settle(at.run())
    assert len(current(at, "world").shots) == 2

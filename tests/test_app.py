"""The Streamlit app's flows with AppTest, on the tiny checkpoint (2 denoising steps).

A button that runs the model starts a background job; `settle` waits for it and reruns
the script, as the page's run following the job does in a browser.
"""

from __future__ import annotations

import io
import os
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from workbench.app.jobs import Job
from workbench.metrics import frame_metrics, psnr

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
TIMEOUT = 180  # the first run loads the model


@pytest.fixture
def app(tiny_dir, tmp_path, monkeypatch):
    yield from fast_app(tiny_dir, tmp_path, monkeypatch)


def app_test(monkeypatch) -> AppTest:
    """The app under AppTest. A browser's run follows a running job to its end; here a
    run draws the job's line once and returns, and `settle` reruns until the job ends."""
    monkeypatch.setattr("app_pages.common.FOLLOW_SECONDS", 0.0)
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def fast_app(tiny_dir, tmp_path, monkeypatch):
    """The app on the tiny checkpoint with fast knobs (2 steps, 64x64); a generator for
    fixtures (the job still running at the end is cancelled)."""
    monkeypatch.setenv("WORKBENCH_MODEL", str(tiny_dir))
    monkeypatch.setenv("WORKBENCH_SESSIONS", str(tmp_path / "sessions"))
    threads = torch.get_num_threads()
    at = app_test(monkeypatch)
    at.run()
    _ok(at)
    at.sidebar.number_input(key="knob_steps").set_value(2)
    at.sidebar.number_input(key="knob_think_tokens").set_value(4)
    at.sidebar.checkbox(key="knob_auto_size").uncheck()
    at.run()
    at.sidebar.number_input(key="knob_height").set_value(64)
    at.sidebar.number_input(key="knob_width").set_value(64)
    at.run()
    _ok(at)
    yield at
    job = at.session_state.get("job") if "job" in at.session_state else None
    if job is not None:
        job.cancel()
        job.wait(60)
    torch.set_num_threads(threads)  # the app set its own count for the whole process


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _job(at: AppTest):
    return at.session_state["job"] if "job" in at.session_state else None


def settle(at: AppTest) -> AppTest:
    """Wait for the running job, then rerun so the page applies its result."""
    while (job := _job(at)) is not None:
        assert job.wait(TIMEOUT), f"{job.title} still {job.state}"
        at.run()
    _ok(at)
    return at


def _texts(elements) -> list[str]:
    return [e.value for e in elements]


def _png(size=(64, 64), color=(30, 160, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def _page(at: AppTest, name: str) -> None:
    at.sidebar.radio(key="page").set_value(name)
    at.run()
    _ok(at)


def current(at: AppTest, page: str):
    """The page's current branch in the app's workspace."""
    ws = at.session_state["workspace"]
    return ws.branches[ws.current[page]]


def _world(at: AppTest):
    return current(at, "world")


def _start_world(at: AppTest) -> None:
    _page(at, "World")
    at.text_input(key="world_prompt").set_value("a quiet street")
    at.button(key="world_start_prompt").click()
    settle(at.run())


def test_random_weights_banner_and_defaults(app):
    (banner,) = [w.value for w in app.warning if "random weights" in w.value]
    assert "`workbench app --model /path/to/BAGEL-7B-MoT`" in banner  # the command to type
    knobs = {k: app.sidebar.number_input(key=k).value for k in ("knob_cfg_text", "knob_cfg_img")}
    assert knobs == {"knob_cfg_text": 4.0, "knob_cfg_img": 1.5}  # the documented defaults
    assert app.sidebar.slider(key="knob_interval").value == (0.4, 1.0)
    app.sidebar.button(key="knob_edit").click().run()
    assert app.sidebar.number_input(key="knob_cfg_img").value == 2.0
    assert app.sidebar.slider(key="knob_interval").value == (0.0, 1.0)


def test_world_start_forward_undo_fork(app):
    _start_world(app)
    assert "1 frame" in _texts(app.caption)
    app.button(key="move_forward").click()
    settle(app.run())
    branch = _world(app)
    assert [s.label for s in branch.shots] == ["start", "forward"]
    assert len(branch.metrics) == 2 and len(app.table) == 1
    turns = len(branch.session.turns)
    app.button(key="world_undo").click().run()
    assert len(branch.session.turns) == turns - 2 and "1 frame" in _texts(app.caption)
    app.button(key="world_fork").click().run()
    ws = app.session_state["workspace"]
    assert [b.name for b in ws.of_page("world")] == ["world-1", "world-2"]
    assert ws.current["world"] == "world-2"
    assert any("Forked world-1 as **world-2**" in s.value for s in app.success)
    app.button(key="move_turn_left").click()
    settle(app.run())
    assert [s.label for s in ws.branches["world-2"].shots] == ["start", "turn left"]
    assert [s.label for s in ws.branches["world-1"].shots] == ["start"]


def test_world_rotate_and_predict(app):
    _start_world(app)
    app.number_input(key="rot_steps").set_value(2)
    app.button(key="rotate").click()
    settle(app.run())
    app.number_input(key="pred_frames").set_value(2)
    app.button(key="predict").click()
    settle(app.run())
    branch = _world(app)
    assert [s.label for s in branch.shots] == [
        "start",
        "rotate 30°",
        "rotate 60°",
        "autoregressive t+1",
        "autoregressive t+2",
    ]
    assert [m.index for m in branch.metrics] == [0, 1, 2, 3, 4] and "5 frames" in _texts(
        app.caption
    )
    app.radio(key="pred_mode").set_value("forcing").run()
    app.button(key="predict").click()
    settle(app.run())
    _ok(app)
    branch = _world(app)
    assert [s.label for s in branch.shots][-2:] == ["forcing t+1", "forcing t+2"]
    assert len(branch.shots) == 7
    # metrics kept for the earlier frames equal a computation over the whole timeline
    assert branch.metrics == frame_metrics(branch.session.pipe, [s.image for s in branch.shots])


def test_world_from_an_uploaded_image_and_a_bad_upload(app):
    _page(app, "World")
    app.file_uploader(key="world_upload").set_value(("notes.png", b"not a picture", "image/png"))
    app.button(key="world_start_image").click().run()
    _ok(app)
    assert any("notes.png: not an image" in e.value for e in app.error)
    assert _job(app) is None and not _world(app).session.turns
    app.file_uploader(key="world_upload").set_value(("start.png", _png(), "image/png"))
    app.button(key="world_start_image").click()
    settle(app.run())
    shots = _world(app).shots
    assert [s.label for s in shots] == ["start"] and shots[0].image.size == (64, 64)


def test_story_beats_regenerate_compare_and_edit_with_thinking(app):
    for text, image in (("a fox finds a lantern", _png()), ("the fox sleeps", None)):
        app.text_area(key="beat_text").set_value(text)
        if image:
            app.file_uploader(key="beat_image_0").set_value(("ref.png", image, "image/png"))
        app.button[0].click()  # the form's "Add beat"
        app.run()
        _ok(app)
    assert len(app.session_state["story_pending"]) == 2
    app.button(key="story_generate").click()
    settle(app.run())
    ws = app.session_state["workspace"]
    story = current(app, "story")
    assert [s.text for s in story.steps] == ["a fox finds a lantern", "the fox sleeps"]
    assert story.steps[0].reference is not None and "2 frames" in _texts(app.caption)
    assert app.session_state["story_pending"] == []
    app.number_input(key="regen_beat").set_value(2).run()
    assert "Beat 2 was made with seed 1." in _texts(app.caption)  # a chain's frame k: seed + k
    assert app.number_input(key="regen_seed_story-1_2").value == 2
    app.button(key="regenerate").click()
    settle(app.run())
    assert [b.name for b in ws.of_page("story")] == ["story-1", "story-2"]
    one, two = ws.branches["story-1"].shots, ws.branches["story-2"].shots
    assert two[0].image is one[0].image and psnr(two[1].image, one[1].image) < 30
    assert app.selectbox(key="compare_a").value == "story-1"
    assert app.selectbox(key="story_branch").value == "story-2"
    assert any("PSNR" in m.value or "identical" in m.value for m in app.markdown)
    # again, from the branch now shown: the newest branch is shown and compared, each time
    for new in ("story-3", "story-4"):
        app.button(key="regenerate").click()
        settle(app.run())
        assert app.selectbox(key="story_branch").value == new == ws.current["story"]
        assert app.selectbox(key="compare_b").value == new
        assert any(f"**{new}**, now shown" in s.value for s in app.success)
    app.selectbox(key="story_branch").set_value("story-2").run()
    assert ws.current["story"] == "story-2"
    for new in ("story-5", "story-6"):
        app.button(key="story_fork").click().run()
        assert app.selectbox(key="story_branch").value == new == ws.current["story"]
        assert app.selectbox(key="compare_b").value == new
    app.text_input(key="edit_instruction").set_value("make it night")
    app.button(key="edit").click()
    settle(app.run())
    last = ws.branches["story-6"].shots[-1]
    assert last.thought is not None and last.label == "edit round 1"
    assert any(e.label == "Thought before frame 3" for e in app.expander)


def test_sessions_save_open_replay_and_downloads(app, tmp_path):
    _start_world(app)
    app.button(key="move_forward").click()
    settle(app.run())
    _page(app, "Sessions")
    app.text_input(key="save_name_world-1").set_value("walk")
    app.button(key="save").click().run()
    assert (tmp_path / "sessions" / "walk" / "session.json").is_file()
    # replay the saved folder: the same device and dtype give identical frames
    app.button(key="replay").click()
    settle(app.run())
    assert any("identical" in s.value for s in app.success), _texts(app.warning) + _texts(app.error)
    # downloads: every format, prepared in one job
    app.button(key="sessions_prepare").click()
    settle(app.run())
    revision, data = app.session_state["downloads"]["world-1"]
    assert data["mp4"][4:8] == b"ftyp" and data["gif"][:6] == b"GIF89a"
    assert data["sheet"][:8] == b"\x89PNG\r\n\x1a\n"
    with zipfile.ZipFile(io.BytesIO(data["frames"])) as frames:
        assert frames.namelist() == ["frame_0001.png", "frame_0002.png"]
    labels = [b.label for b in app.get("download_button")]
    assert labels == [
        "Frames (ZIP)",
        "GIF",
        "MP4",
        "Contact sheet",
        "Story page",
        "Session archive",
    ]
    # open the downloaded archive on the story page, then a folder on the world page
    app.radio(key="open_page").set_value("story")
    app.file_uploader(key="open_upload").set_value(("walk.zip", data["session"], "application/zip"))
    app.button(key="open").click()
    settle(app.run())
    ws = app.session_state["workspace"]
    assert ws.current["story"] == "story-1" and len(ws.branches["story-1"].session.turns) == 4
    assert any("Opened walk-2 as **story-1**" in s.value for s in app.success)  # walk: taken
    app.radio(key="open_source").set_value("the saved sessions").run()
    app.radio(key="open_page").set_value("world")
    app.selectbox(key="open_folder").set_value(tmp_path / "sessions" / "walk")
    app.button(key="open").click()
    settle(app.run())
    opened = ws.branches["world-2"]
    assert [s.text for s in opened.steps] == ["a quiet street", "Move the camera forward."]
    assert [s.image.tobytes() for s in opened.shots] == [
        s.image.tobytes() for s in ws.branches["world-1"].shots
    ]


def test_bad_archive_gives_a_message(app, tmp_path):
    _page(app, "Sessions")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("session.json", "{}")
        archive.writestr("../../escape.png", "x")
    app.file_uploader(key="open_upload").set_value(
        ("evil.zip", buffer.getvalue(), "application/zip")
    )
    app.button(key="open").click().run()
    _ok(app)
    assert any("unsafe path '../../escape.png'" in e.value for e in app.error)
    app.file_uploader(key="open_upload").set_value(("junk.zip", b"junk", "application/zip"))
    app.button(key="open").click().run()
    assert any("junk.zip: not a zip archive" in e.value for e in app.error)
    assert not (tmp_path / "escape.png").exists() and _job(app) is None


def test_queue_state_while_another_user_generates_then_cancel(app):
    _start_world(app)
    gate = _gate(app)
    other = threading.Event()
    assert gate.enter("another user", other)
    try:
        app.run()
        assert any("Another user is generating" in i.value for i in app.sidebar.info)
        app.button(key="move_forward").click().run()
        _ok(app)
        job = _job(app)
        assert job is not None and job.state == "queued"
        assert any("Waiting in line" in i.value and "1 ahead" in i.value for i in app.info)
        assert app.button(key="move_back").disabled  # one job per browser session
        app.button(key="cancel_job").click()
        settle(app.run())
        assert job.state == "cancelled"
        assert any("Cancelled forward" in i.value for i in app.info)
        assert [s.label for s in _world(app).shots] == ["start"]
    finally:
        gate.leave("another user")


def test_cancel_during_denoising_leaves_the_world_as_it_was(app, monkeypatch):
    _start_world(app)
    real = Job.progress

    def slow(job, done, total):  # 200 steps that take seconds, whatever the machine
        time.sleep(0.02)
        real(job, done, total)

    monkeypatch.setattr(Job, "progress", slow)
    branch = _world(app)
    turns, length = len(branch.session.turns), branch.session.main.length
    app.sidebar.number_input(key="knob_steps").set_value(200)
    app.button(key="move_forward").click().run()
    job = _job(app)
    while job.steps_done < 1 and not job.finished:
        job.wait(0.05)
    assert job.state == "running"
    app.run()  # what the page's poll draws meanwhile
    assert any("forward: step" in p.proto.text for p in app.get("progress"))
    app.button(key="cancel_job").click()
    settle(app.run())
    assert job.state == "cancelled" and job.steps_done < 199
    assert (len(branch.session.turns), branch.session.main.length) == (turns, length)
    assert [s.label for s in branch.shots] == ["start"]


def _gate(at: AppTest):
    """The generation gate of the app's model (st.cache_resource: one per process)."""
    from app_pages.common import cached_model

    model = cached_model(os.environ["WORKBENCH_MODEL"], "auto", "default")
    assert model.pipe is current(at, "story").session.pipe
    return model.gate


def test_a_model_that_does_not_load_gives_a_message(app, tmp_path):
    app.sidebar.text_input(key="model_spec").set_value(str(tmp_path / "no-such-model")).run()
    _ok(app)
    assert any(
        "Cannot load the model" in e.value and "no such checkpoint" in e.value for e in app.error
    )
    assert not app.header  # no page without a model
    app.sidebar.text_input(key="model_spec").set_value(os.environ["WORKBENCH_MODEL"]).run()
    assert [h.value for h in app.header] == ["Story"]


def test_the_model_box_offers_the_profiles(app):
    app.run()
    assert "int8" in app.sidebar.selectbox(key="profile").options
    app.sidebar.selectbox(key="profile").set_value("offload").run()
    _ok(app)
    assert any("Cannot load the model" in e.value and "onto a GPU" in e.value for e in app.error)
    app.sidebar.selectbox(key="profile").set_value("nf4").run()
    assert [h.value for h in app.header] == ["Story"]
    assert current(app, "story").session.pipe.profile == "nf4"

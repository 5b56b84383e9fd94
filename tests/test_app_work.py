"""The app never loses work: autosave and restore (AppTest and the logic), Cancel of the
long jobs (replay, open, downloads, thinking), rejected uploads, session management."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest
from test_app import (  # the AppTest fixture and helpers
    _ok,
    _page,
    _start_world,
    _texts,
    _world,
    app_test,
    fast_app,
    settle,
)

from bagel.checkpoint import checkpoint_identity
from workbench import chains, store
from workbench.app import actions, autosave
from workbench.app.branches import Workspace
from workbench.app.files import UploadError, delete_session, rename_session, unpack_session
from workbench.app.jobs import Gate, Job
from workbench.params import GenerationParams
from workbench.session import Session

FAST = GenerationParams(num_timesteps=3, height=64, width=64, max_think_tokens=4)


@pytest.fixture
def app(tiny_dir, tmp_path, monkeypatch):
    yield from fast_app(tiny_dir, tmp_path, monkeypatch)


def _fresh_app(tiny_dir, sessions, monkeypatch, ws: str | None = None) -> AppTest:
    """Another tab (or the same address after a reload, with `ws`)."""
    monkeypatch.setenv("WORKBENCH_MODEL", str(tiny_dir))
    monkeypatch.setenv("WORKBENCH_SESSIONS", str(sessions))
    at = app_test(monkeypatch)
    if ws is not None:
        at.query_params["ws"] = ws
    at.run()
    _ok(at)
    return at


def _frames(branch) -> list[bytes]:
    return [shot.image.tobytes() for shot in branch.shots]


def _marks(session: Session) -> tuple:
    return session.main.length, session.main.rope, session.image_dropped.length, session.text_mark


def test_every_branch_is_autosaved_and_a_reload_restores_them_exactly(
    app, tiny_dir, tmp_path, monkeypatch
):
    _start_world(app)
    app.button(key="move_turn_left").click()
    settle(app.run())
    app.button(key="world_fork").click().run()
    app.button(key="world_undo").click().run()  # world-2: back to the start frame
    wid = app.session_state["workspace_id"]
    sessions = tmp_path / "sessions"
    saved = {b.name: b for b in autosave.saved_branches(sessions, wid)}
    assert set(saved) == {"world-1", "world-2"} and saved["world-2"].frames == 1
    ws = app.session_state["workspace"]

    reloaded = _fresh_app(tiny_dir, sessions, monkeypatch, ws=wid)
    assert any("Autosaved from this address" in m.value for m in reloaded.markdown)
    reloaded.button(key="restore_0").click()
    settle(reloaded.run())
    again = reloaded.session_state["workspace"]
    assert reloaded.session_state["workspace_id"] == wid
    for name in ("world-1", "world-2"):
        a, b = ws.branches[name], again.branches[name]
        assert _frames(a) == _frames(b) and [s.label for s in b.shots] == [s.label for s in a.shots]
        assert _marks(a.session) == _marks(b.session)
        assert a.metrics == b.metrics
    assert [s.label for s in again.branches["world-1"].shots] == ["start", "turn left"]
    # the same contexts: the next move makes the same frame on both
    one = chains.navigate(ws.branches["world-1"].session, ["forward"], FAST).frames[0].image
    two = chains.navigate(again.branches["world-1"].session, ["forward"], FAST).frames[0].image
    assert np.array_equal(np.asarray(one), np.asarray(two))


def test_a_new_tab_offers_the_recent_work_and_can_start_fresh(app, tiny_dir, tmp_path, monkeypatch):
    _start_world(app)
    other = _fresh_app(tiny_dir, tmp_path / "sessions", monkeypatch)
    assert other.session_state["workspace_id"] != app.session_state["workspace_id"]
    assert any(
        "Autosaved from a recent visit: 1 world (world-1: 1 frame)" in m.value
        for m in other.markdown
    )
    other.button(key="restore_dismiss").click().run()
    assert not any("Autosaved" in m.value for m in other.markdown)


def test_new_world_keeps_the_old_branch(app):
    _start_world(app)
    app.button(key="world_new").click().run()
    ws = app.session_state["workspace"]
    assert ws.current["world"] == "world-2" and not _world(app).shots
    assert len(ws.branches["world-1"].shots) == 1
    assert app.selectbox(key="world_branch").value == "world-2"


def test_a_rejected_reference_keeps_the_text_and_says_why(app):
    app.text_area(key="beat_text").set_value("a fox finds a lantern")
    app.file_uploader(key="beat_image_0").set_value(("notes.txt", b"not an image", "text/plain"))
    app.button[0].click().run()  # the form's "Add beat"
    _ok(app)
    assert app.session_state["story_pending"] == []
    assert any(e.value.startswith("Not added: the reference image notes.txt") for e in app.error)
    assert app.text_area(key="beat_text").value == "a fox finds a lantern"


def test_replay_report_names_frames_and_save_name_follows_the_branch(app):
    _start_world(app)
    app.button(key="world_new").click().run()
    _page(app, "World")
    _page(app, "Sessions")
    app.selectbox(key="save_branch").set_value("world-1").run()
    assert app.text_input(key="save_name_world-1").value == "world-1"
    app.button(key="save").click().run()
    app.button(key="replay").click()
    settle(app.run())
    assert any("identical (replayed 1 frame(s)" in s.value for s in app.success)
    assert app.table[0].value.iloc[0]["frame"] == "frame 1 (turn 1)"


def test_rename_and_delete_saved_sessions(pipe, tmp_path):
    s = Session(pipe)
    s.add_text("a street")
    s.generate_image(FAST)
    store.save(s, tmp_path / "walk")
    (tmp_path / "other").mkdir()
    assert rename_session(tmp_path, "walk", "stroll") == tmp_path / "stroll"
    with pytest.raises(UploadError, match="exists"):
        rename_session(tmp_path, "stroll", "other")
    with pytest.raises(UploadError, match="session name"):
        rename_session(tmp_path, "stroll", "../out")
    with pytest.raises(UploadError, match="no saved session"):
        delete_session(tmp_path, "other")  # not a session: left alone
    delete_session(tmp_path, "stroll")
    assert not (tmp_path / "stroll").exists() and (tmp_path / "other").is_dir()


def _cancel_at(count: int):
    """A work wrapper that presses Cancel at the job's `count`-th progress report."""
    box: list[Job] = []
    calls = [0]

    def wrap(work):
        def run(progress):
            def report(done, total):
                calls[0] += 1
                if calls[0] == count:
                    box[0].cancel()
                progress(done, total)

            return work(report)

        return run

    return box, wrap


@pytest.fixture(scope="module")
def saved_story(pipe, tmp_path_factory):
    s = Session(pipe)
    chains.story(s, ["a fox", "a lantern", "a cave"], FAST)
    return store.save(s, tmp_path_factory.mktemp("story") / "story"), s


def test_cancel_stops_a_replay_within_one_step(pipe, saved_story):
    folder, _ = saved_story
    (folder / "replay_report.json").unlink(missing_ok=True)
    box, wrap = _cancel_at(2)  # after turn 1, during the first frame's first step
    box.append(Job("replay", wrap(actions.replay_saved(folder, pipe, False)), Gate()))
    job = box[0].start()
    assert job.wait(120) and job.state == "cancelled"
    assert job.steps_done == 1 and not (folder / "replay_report.json").exists()


def test_cancel_stops_opening_and_a_cancelled_upload_leaves_nothing(pipe, saved_story, tmp_path):
    folder, _ = saved_story
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for path in folder.rglob("*"):
            if path.is_file():
                z.write(path, path.relative_to(folder).as_posix())
    unpacked = unpack_session("story.zip", archive.getvalue(), tmp_path / "story")
    box, wrap = _cancel_at(1)
    work = actions.open_saved(unpacked, "story", pipe, False, discard=True)
    box.append(Job("open", wrap(work), Gate()))
    assert box[0].start().wait(120) and box[0].state == "cancelled"
    assert not unpacked.exists() and list(tmp_path.iterdir()) == []
    # a failing open (a damaged manifest) leaves nothing either
    unpacked = unpack_session("story.zip", archive.getvalue(), tmp_path / "story")
    (unpacked / "session.json").write_text("{")
    job = Job("open", actions.open_saved(unpacked, "story", pipe, False, discard=True), Gate())
    assert job.start().wait(120) and job.state == "failed" and not unpacked.exists()


def test_cancel_stops_downloads_and_the_story_page_embeds_its_images(pipe, saved_story):
    _, session = saved_story
    ws = Workspace()
    branch = ws.add("story", session.fork())
    box, wrap = _cancel_at(2)
    box.append(Job("downloads", wrap(actions.downloads(branch)), Gate()))
    assert box[0].start().wait(120) and box[0].state == "cancelled" and box[0].result is None
    job = Job("downloads", actions.downloads(branch), Gate()).start()
    assert job.wait(120) and job.state == "done"
    page = job.result["story"].decode()
    assert page.count('src="data:image/png;base64,') == 3 and "frames/" not in page


def test_cancel_stops_thinking_within_one_token(pipe):
    ws = Workspace()
    branch = ws.branch("story", pipe)
    branch.session.add_text("a fox")
    branch.session.generate_image(FAST)
    before = (len(branch.session.turns), branch.session.main.length)
    params = GenerationParams(num_timesteps=3, height=64, width=64, max_think_tokens=200)
    calls = []
    work = actions.edit(branch, "make it night", params, think=True)
    box = []

    def run(progress):
        def report(done, total):
            calls.append((done, total))
            if len(calls) == 3:
                box[0].cancel()
            progress(done, total)

        return work(report)

    box.append(Job("edit", run, Gate()))
    assert box[0].start().wait(120) and box[0].state == "cancelled"
    assert len(calls) == 3 and calls[-1][0] == 0  # still thinking: no denoising step yet
    assert (len(branch.session.turns), branch.session.main.length) == before


def test_autosaved_json_is_readable_by_any_parser(app, tiny_dir, tmp_path):
    _start_world(app)
    wid = app.session_state["workspace_id"]
    meta = tmp_path / "sessions" / "autosave" / wid / "world-1" / "branch.json"
    assert json.loads(meta.read_text()) == {  # the branch's model recorded with it
        "page": "world",
        "model": str(tiny_dir),
        "identity": checkpoint_identity(tiny_dir),
        "frames": 1,
        "labels": {"1": "start"},
    }
    assert "1 frame" in _texts(app.caption)


def test_new_work_on_a_reloaded_tab_never_overwrites_its_unrestored_branches(
    app, tiny_dir, tmp_path, monkeypatch
):
    _start_world(app)
    wid, sessions = app.session_state["workspace_id"], tmp_path / "sessions"
    before = (sessions / "autosave" / wid / "world-1" / "session.json").read_bytes()
    reloaded = _fresh_app(tiny_dir, sessions, monkeypatch, ws=wid)
    reloaded.sidebar.number_input(key="knob_steps").set_value(2)
    _page(reloaded, "World")
    reloaded.text_input(key="world_prompt").set_value("another street")
    reloaded.button(key="world_start_prompt").click()
    settle(reloaded.run())
    assert (sessions / "autosave" / wid / "world-1" / "session.json").read_bytes() == before
    moved = reloaded.session_state["workspace_id"]
    assert moved != wid and reloaded.query_params["ws"] == moved
    assert [b.name for b in autosave.saved_branches(sessions, moved)] == ["world-1"]

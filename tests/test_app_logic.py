"""The browser app's logic without Streamlit: the generation gate, jobs and cancellation,
steps read off turns, uploads, session archives and saves."""

from __future__ import annotations

import io
import threading
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from workbench import chains, store
from workbench.app import actions
from workbench.app.branches import Workspace, steps_from_turns
from workbench.app.files import (
    UploadError,
    pack_folder,
    read_image,
    save_session,
    saved_sessions,
    unpack_session,
)
from workbench.app.jobs import Cancelled, Gate, Job
from workbench.app.model import app_options
from workbench.metrics import psnr
from workbench.params import GenerationParams
from workbench.session import Session

FAST = GenerationParams(num_timesteps=3, height=64, width=64, max_think_tokens=4)


def _png(size=(40, 32), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def _wait(job: Job) -> Job:
    assert job.wait(120), f"{job.title} still {job.state}"
    return job


# -- gate and jobs --------------------------------------------------------------------


def test_gate_admits_in_order_and_reports_positions():
    gate, order = Gate(), []
    release = threading.Event()

    def work(name):
        def run(_progress):
            order.append(name)
            release.wait(10)

        return run

    first = Job("first", work("first"), gate).start()
    while first.state != "running":
        time.sleep(0.01)
    second = Job("second", work("second"), gate).start()
    third = Job("third", work("third"), gate).start()
    while gate.waiting < 2:
        time.sleep(0.01)
    assert (second.state, third.state) == ("queued", "queued")
    assert (second.position, third.position) == (1, 2)  # the running job is ahead of both
    assert gate.busy
    release.set()
    for job in (first, second, third):
        assert _wait(job).state == "done"
    assert order == ["first", "second", "third"]
    assert not gate.busy and gate.waiting == 0


def test_a_queued_job_cancelled_leaves_the_line_without_running():
    gate, ran = Gate(), []
    holder = threading.Event()
    gate.enter("someone else", holder)
    job = Job("waiting", lambda _p: ran.append(1), gate).start()
    while job.position is None:
        time.sleep(0.01)
    job.cancel()
    assert _wait(job).state == "cancelled"
    assert ran == [] and gate.waiting == 0
    gate.leave("someone else")
    assert not gate.busy


def test_job_failures_become_messages():
    def bad_input(_p):
        GenerationParams(num_timesteps=1)

    def bug(_p):
        raise KeyError("oops")

    gate = Gate()
    assert "num_timesteps" in _wait(Job("a", bad_input, gate).start()).error
    assert _wait(Job("b", bug, gate).start()).error == "KeyError: 'oops'"
    assert not gate.busy


def _start(pipe) -> Session:
    session = Session(pipe)
    session.add_image(Image.new("RGB", (64, 64), (10, 120, 200)))
    return session


def _state(session: Session) -> tuple:
    spans = [(id(block), start, stop) for block, start, stop in session.main.spans]
    return (
        len(session.turns),
        spans,
        session.main.rope,
        session.text_mark,
        session.image_dropped.length,
    )


def _cancel_during_step_2(job_box: list, progress):
    def report(done, total):
        if done == 1:
            job_box[0].cancel()  # the user presses Cancel while step 2 runs
        progress(done, total)

    return report


def test_cancel_mid_denoising_leaves_the_branch_as_it_was(pipe):
    """Cancelled raised by the progress callback stops the sampler; the chain rewinds the
    turn it added, so the contexts hold exactly the blocks and rows they held before, and
    the branch's steps never changed."""
    ws = Workspace()
    branch = ws.branch("world", pipe)
    branch.session = _start(pipe)
    before = _state(branch.session)
    box = []
    work = actions.navigate(branch, ["forward"], FAST)
    box.append(Job("forward", lambda p: work(_cancel_during_step_2(box, p)), Gate()))
    assert _wait(box[0].start()).state == "cancelled"
    assert (box[0].steps_done, box[0].steps_total) == (1, 2)
    assert _state(branch.session) == before and branch.steps == []
    a = np.asarray(chains.navigate(branch.session, ["forward"], FAST).frames[0].image, int)
    b = np.asarray(chains.navigate(_start(pipe), ["forward"], FAST).frames[0].image, int)
    # identical: attention reads the cache as one buffer whatever its block layout
    assert np.array_equal(a, b)


def test_cancel_while_the_metrics_are_computed_leaves_the_branch_as_it_was(pipe):
    """The frame is made, then Cancel arrives in the metrics phase: its turns go too."""

    class CancelAtMetrics(Job):
        def progress(self, done: int, total: int) -> None:
            if self.phase.startswith("consistency metrics"):
                self.cancel()  # the user presses Cancel once the frame is there
            super().progress(done, total)

    ws = Workspace()
    branch = ws.branch("world", pipe)
    branch.session = _start(pipe)
    before = _state(branch.session)
    job = CancelAtMetrics("forward", actions.navigate(branch, ["forward"], FAST), Gate())
    assert _wait(job.start()).state == "cancelled"
    assert job.phase.startswith("consistency metrics") and job.steps_done == 0
    assert _state(branch.session) == before and branch.steps == []


def test_a_failing_start_rewinds_its_turns(pipe):
    ws = Workspace()
    branch = ws.branch("world", pipe)
    too_big = GenerationParams(num_timesteps=2, height=4096, width=4096)
    job = _wait(
        Job("start", actions.start_from_prompt(branch, "a street", too_big), Gate()).start()
    )
    assert job.state == "failed" and "height 4096" in job.error
    assert branch.session.turns == [] and branch.session.main.length == 0


def test_cancelled_raised_by_progress_reaches_the_caller(pipe):
    session = Session(pipe)
    session.add_text("a lighthouse")

    def cancel(_done, _total):
        raise Cancelled("test")

    with pytest.raises(Cancelled):
        session.generate_image(FAST, cancel)
    assert [t.kind for t in session.turns] == ["text"]


# -- branches -------------------------------------------------------------------------


def test_world_work_runs_on_a_fork_and_applies_steps_with_metrics(pipe):
    ws = Workspace()
    branch = ws.branch("world", pipe)
    image = read_image("start.png", _png((64, 64)), pipe)
    actions.apply(
        ws, _wait(Job("start", actions.start_from_image(branch, image), Gate()).start()).result
    )
    work = actions.navigate(branch, ["turn_left"], FAST)
    assert len(branch.session.turns) == 1  # nothing happens before the job runs
    outcome = _wait(Job("left", work, Gate()).start()).result
    assert len(branch.session.turns) == 3 and len(branch.steps) == 1  # the strip: unchanged
    actions.apply(ws, outcome)
    assert [s.label for s in branch.shots] == ["start", "turn left"]
    assert [m.index for m in branch.metrics] == [0, 1]
    assert branch.metrics[0].drift == pytest.approx(1.0)
    revision = branch.revision
    branch.undo()
    assert len(branch.session.turns) == 1 and len(branch.metrics) == 1
    assert branch.revision == revision + 1
    fork = ws.fork(branch)
    assert fork.name == "world-2" and ws.current["world"] == "world-2"
    assert fork.session.main.blocks()[0] is branch.session.main.blocks()[0]  # shared past


def test_story_steps_group_reference_beat_and_caption(pipe):
    ws = Workspace()
    branch = ws.branch("story", pipe)
    reference = read_image("ref.png", _png((64, 64)), pipe)
    beats = [chains.Beat("a fox", reference), chains.Beat("the fox sleeps")]
    work = actions.story(branch, beats, FAST, caption=True)
    actions.apply(ws, _wait(Job("story", work, Gate()).start()).result)
    assert [s.text for s in branch.steps] == ["a fox", "the fox sleeps"]
    assert branch.steps[0].reference is not None and branch.steps[1].reference is None
    assert [s.label for s in branch.shots] == ["beat 1", "beat 2"]
    assert all(isinstance(s.caption, str) for s in branch.shots)
    assert branch.steps[1].start == branch.steps[0].start + 5  # ref, text, image, question, caption
    # the same grouping from the turns alone (a loaded session)
    again = steps_from_turns(branch.session.turns, 0, "story")
    assert [(s.start, s.text) for s in again] == [(s.start, s.text) for s in branch.steps]
    # regenerate beat 2 as a new branch: beat 1 kept as is, beat 2 made with a new seed
    work = actions.regenerate(branch, 1, GenerationParams(**{**vars(FAST), "seed": 7}), True)
    new = actions.apply(ws, _wait(Job("again", work, Gate()).start()).result)
    assert new.name == "story-2" and len(new.steps) == 2
    assert new.shots[0].image is branch.shots[0].image
    assert new.session.turns[new.shots[1].turn].seed == 7
    assert psnr(new.shots[1].image, branch.shots[1].image) < 30  # other noise, other frame
    assert len(branch.steps) == 2  # the original branch is unchanged


def test_edit_with_thinking_keeps_the_thought(pipe):
    ws = Workspace()
    branch = ws.branch("story", pipe)
    actions.apply(
        ws, _wait(Job("s", actions.story(branch, ["a cat"], FAST, False), Gate()).start()).result
    )
    work = actions.edit(branch, "make it night", FAST, think=True)
    actions.apply(ws, _wait(Job("edit", work, Gate()).start()).result)
    last = branch.steps[-1]
    assert last.text == "make it night"
    assert isinstance(last.shots[0].thought, str) and last.shots[0].label == "edit round 1"


# -- files ----------------------------------------------------------------------------


def test_read_image_gives_messages_for_bad_uploads(pipe, monkeypatch):
    with pytest.raises(UploadError, match=r"^notes\.png: not an image"):
        read_image("notes.png", b"hello, not a picture", pipe)
    with pytest.raises(UploadError, match="truncated"):
        read_image("cut.png", _png()[:60], pipe)
    with pytest.raises(UploadError, match="aspect ratio"):
        read_image("thin.png", _png((1000, 10)), pipe)
    monkeypatch.setattr("workbench.app.files.MAX_IMAGE_MB", 0)
    with pytest.raises(UploadError, match="over the 0 MB limit"):
        read_image("big.png", _png(), pipe)


def _saved(pipe, tmp_path):
    session = Session(pipe)
    session.add_text("a boat")
    session.generate_image(FAST)
    return store.save(session, tmp_path / "saved")


def _zip(entries: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            if name in links:
                info.external_attr = 0o120777 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def test_session_archive_round_trip(pipe, tmp_path):
    folder = _saved(pipe, tmp_path)
    data = pack_folder(folder)
    opened = unpack_session("s.zip", data, tmp_path / "sessions" / "s")
    assert (
        store.load(opened, pipe).turns[1].image.tobytes()
        == store.load(folder, pipe).turns[1].image.tobytes()
    )
    # an archive whose files sit in one top folder, with junk beside, opens too
    entries = {f"top/{p.relative_to(folder)}": p.read_bytes() for p in folder.rglob("*.*")}
    entries["top/notes.txt"] = b"skipped"
    opened = unpack_session("t.zip", _zip(entries), tmp_path / "sessions" / "t")
    assert sorted(p.name for p in opened.iterdir()) == ["images", "session.json"]
    assert saved_sessions(tmp_path / "sessions") == [opened, tmp_path / "sessions" / "s"]


@pytest.mark.parametrize(
    ("entries", "links", "message"),
    [
        ({"session.json": b"{}", "../evil.png": b"x"}, (), "unsafe path"),
        ({"/etc/session.json": b"{}"}, (), "unsafe path"),
        ({"session.json": b"{}", "images\\..\\x.png": b"x"}, (), "unsafe path"),
        ({"C:/session.json": b"{}"}, (), "unsafe path"),
        ({"session.json": b"{}", "images/0000.png": b"/etc/passwd"}, ("images/0000.png",), "link"),
        ({"images/0000.png": b"x"}, (), "expected one session.json"),
        ({"a/b/session.json": b"{}"}, (), "expected one session.json"),
    ],
)
def test_unsafe_archives_are_refused(tmp_path, entries, links, message):
    dest = tmp_path / "sessions" / "x"
    with pytest.raises(UploadError, match=message):
        unpack_session("x.zip", _zip(entries, links), dest)
    assert not dest.exists()


def test_archive_limits(tmp_path, monkeypatch):
    with pytest.raises(UploadError, match="not a zip archive"):
        unpack_session("x.zip", b"PK no zip here", tmp_path / "a")
    monkeypatch.setattr("workbench.app.files.MAX_UNPACKED_BYTES", 1000)
    bomb = _zip({"session.json": b"{}", "images/0000.png": b"\0" * 5000})
    with pytest.raises(UploadError, match="unpacks to more than"):
        unpack_session("bomb.zip", bomb, tmp_path / "b")
    monkeypatch.setattr("workbench.app.files.MAX_ARCHIVE_FILES", 1)
    with pytest.raises(UploadError, match="entries, over the limit"):
        unpack_session(
            "many.zip", _zip({"session.json": b"{}", "images/a.png": b""}), tmp_path / "c"
        )
    assert not any(tmp_path.iterdir())


def test_encrypted_and_damaged_archives_are_refused_in_words(tmp_path):
    """Python's zipfile reads neither (a password prompt, a broken deflate stream): each is
    an UploadError saying what is wrong, and nothing is left behind."""
    encrypted = bytearray(_zip({"session.json": b"{}"}))
    for header in (b"PK\x03\x04", b"PK\x01\x02"):  # local and central: flag bit 0
        at = encrypted.index(header) + (6 if header == b"PK\x03\x04" else 8)
        encrypted[at] |= 0x1
    with pytest.raises(UploadError, match="is encrypted; save the session again"):
        unpack_session("locked.zip", bytes(encrypted), tmp_path / "a")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("session.json", b"{" + b"x" * 4000 + b"}")
    damaged = bytearray(buffer.getvalue())
    start = damaged.index(b"session.json") + len("session.json")  # the compressed data
    damaged[start : start + 8] = b"\xff" * 8
    with pytest.raises(UploadError, match="cannot be read, the archive is damaged"):
        unpack_session("damaged.zip", bytes(damaged), tmp_path / "b")
    assert not any(tmp_path.iterdir())


def test_save_session_names_and_overwrite(pipe, tmp_path):
    one, two = Session(pipe), Session(pipe)
    one.add_text("one")
    two.add_text("two")
    two.add_text("three")
    folder = save_session(one, tmp_path, "mine")
    with pytest.raises(UploadError, match="tick overwrite"):
        save_session(two, tmp_path, "mine")
    save_session(two, tmp_path, "mine", overwrite=True)
    assert [t.text for t in store.load(folder, pipe).turns] == ["two", "three"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary left
    for bad in ("../up", ".hidden", "a/b", "", "x" * 65):
        with pytest.raises(UploadError, match="session name"):
            save_session(one, tmp_path, bad)


def test_app_options(monkeypatch):
    env = {"WORKBENCH_MODEL": "/models/bagel", "WORKBENCH_SESSIONS": "/data/s"}
    options = app_options([], env)
    assert (options.model, options.device, str(options.sessions)) == (
        "/models/bagel",
        "auto",
        "/data/s",
    )
    options = app_options(["--model", "org/repo", "--device", "cuda"], env)
    assert (options.model, options.device) == ("org/repo", "cuda")
    assert app_options([], {}).model == ""
    # torch threads: the free cores but one unless asked; a count below 1 is refused
    from workbench import threads
    from workbench.app import model

    monkeypatch.setattr(threads, "machine_cores", lambda: 4)
    monkeypatch.setattr(threads, "busy_cores", lambda seconds=0.1: 1.0)
    model.app_threads.cache_clear()
    assert app_options([], {}).threads == 2
    model.app_threads.cache_clear()
    assert app_options([], {"WORKBENCH_THREADS": "3"}).threads == 3
    assert app_options(["--threads", "2"], {"WORKBENCH_THREADS": "3"}).threads == 2
    with pytest.raises(SystemExit):
        app_options(["--threads", "0"], {})

"""A tab's workspace without the browser: one tab per autosave address (claim files),
branches of several models in one workspace, each autosaved with its model and restored
on it, and the messages a page shows for an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from bagel.checkpoint import checkpoint_identity, load
from bagel.tiny import make_tiny
from workbench import store
from workbench.app import actions, autosave, session_models
from workbench.app.autosave import Claims
from workbench.app.branches import Workspace
from workbench.app.words import for_people, technical
from workbench.params import GenerationParams
from workbench.session import Session
from workbench.store.session_format import SessionFileError

FAST = GenerationParams(num_timesteps=2, height=64, width=64)
WID = "0123456789ab"


def test_an_address_is_claimed_by_one_connected_tab(tmp_path):
    claims, connected = Claims("7-server"), {"tab-1"}
    alive = connected.__contains__
    assert claims.claim(tmp_path, WID, "tab-1", alive)
    claim = json.loads((tmp_path / "autosave" / WID / autosave.CLAIM).read_text())
    assert claim == {"server": "7-server", "tab": "tab-1"}
    assert claims.claim(tmp_path, WID, "tab-1", alive)  # its own later runs
    assert not claims.claim(tmp_path, WID, "tab-2", alive)  # a second tab, the first open
    assert claims.holds(tmp_path, WID, "tab-1") and not claims.holds(tmp_path, WID, "tab-2")
    connected.discard("tab-1")  # the first tab reloaded or closed
    assert claims.claim(tmp_path, WID, "tab-3", alive)
    assert not claims.holds(tmp_path, WID, "tab-1")


def test_another_running_servers_claim_holds_and_a_stopped_ones_does_not(tmp_path):
    alive = {"tab-1"}.__contains__
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert Claims(f"{other.pid}-a").claim(tmp_path, WID, "tab-1", alive)
        assert not Claims("1-b").claim(tmp_path, WID, "tab-1", alive)  # same tab id, too
    finally:
        other.kill()
        other.wait()
    assert Claims("1-b").claim(tmp_path, WID, "tab-1", alive)  # that server has stopped
    # a claim this app did not write holds nothing
    (tmp_path / "autosave" / WID / autosave.CLAIM).write_text("[1, 2]")
    assert Claims.holder(tmp_path, WID) is None


def test_an_autosave_is_written_only_by_the_tab_holding_the_address(pipe, tmp_path):
    ws = Workspace()
    branch = ws.branch("world", pipe, "tiny")
    actions.apply(ws, actions.start_from_image(branch, Image.new("RGB", (64, 64)), 0)(None))
    claims, connected = Claims("9-s"), {"tab-1", "tab-2"}
    alive = connected.__contains__
    assert claims.claim(tmp_path, WID, "tab-1", alive)
    assert not claims.save(tmp_path, WID, "tab-2", branch)  # not its address
    assert autosave.saved_branches(tmp_path, WID) == []
    assert claims.save(tmp_path, WID, "tab-1", branch)
    connected.discard("tab-1")
    assert claims.claim(tmp_path, WID, "tab-2", alive)
    assert not claims.save(tmp_path, WID, "tab-1", branch)  # taken over: it may not write
    (saved,) = autosave.saved_branches(tmp_path, WID)
    assert (saved.name, saved.model, saved.identity) == ("world-1", "tiny", pipe.identity)


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory):
    """A second tiny checkpoint of another identity (the identity hashes the configs and
    the weights' headers: another seed alone keeps it)."""
    folder = make_tiny(tmp_path_factory.mktemp("other") / "ckpt", seed=1)
    config = folder / "llm_config.json"
    config.write_text(config.read_text() + "\n")
    return folder


def test_a_workspace_holds_branches_of_two_models_and_restores_each_on_its_own(
    pipe, tiny_dir, other_dir, tmp_path
):
    other = load(other_dir, device="cpu", dtype="float32")
    ws = Workspace()
    story = ws.branch("story", pipe, str(tiny_dir))
    world = ws.branch("world", other, str(other_dir))
    for branch, params in ((story, FAST), (world, FAST)):
        work = actions.start_from_prompt(branch, "a street", params)
        autosave.save_branch(tmp_path, WID, actions.apply(ws, work(None)))
    # an empty branch on another model is replaced by one on the page's model
    assert ws.branch("world", pipe, "x").name == "world-1"
    fork = ws.fork(ws.branches["world-1"])
    assert fork.model == str(other_dir) and fork.session.pipe is other
    saved = {b.name: b for b in autosave.saved_branches(tmp_path, WID)}
    assert saved["world-1"].identity == checkpoint_identity(other_dir)
    plan = [(b, b.model, pipe if b.model == str(tiny_dir) else other) for b in saved.values()]
    outcomes = {o.branch: o for o in autosave.restore(plan)(lambda done, total: None)}
    assert outcomes["world-1"].session.pipe is other
    assert outcomes["world-1"].model == str(other_dir)
    restored = actions.apply(Workspace(), outcomes["story-1"])
    assert restored.model == str(tiny_dir) and restored.session.pipe is pipe


def test_the_model_of_a_saved_session_is_found_by_its_identity(pipe, tiny_dir, other_dir, tmp_path):
    session = Session(load(other_dir, device="cpu", dtype="float32"))
    session.add_text("a street")
    folder = store.save(session, tmp_path / "saved")
    identity = session_models.saved_identity(folder)
    assert identity == checkpoint_identity(other_dir)
    candidates = [str(tiny_dir), str(other_dir)]
    assert session_models.model_for(identity, None, candidates) == str(other_dir)
    assert session_models.model_for(identity, None, [str(tiny_dir)]) is None  # not one it has
    assert session_models.model_for(identity, None, [], {"loaded": identity}) == "loaded"
    # a recorded model is taken when it is that model, else looked up
    assert session_models.model_for(identity, str(other_dir), []) == str(other_dir)
    assert session_models.model_for(identity, str(tiny_dir), candidates) == str(other_dir)
    assert session_models.model_for(identity, "some/hub-id", []) == "some/hub-id"  # unchecked here
    assert not session_models.is_large(str(tiny_dir)) and session_models.is_large("some/hub-id")
    assert "" in session_models.known_models("x") and session_models.known_models("x")[0] == "x"


def test_messages_for_people_keep_the_precise_text_as_details(tmp_path):
    wrong = SessionFileError(
        f"{tmp_path}/session.json: saved with checkpoint {'ab' * 32}, but the loaded model "
        f"is {'cd' * 32}; pass allow_other_checkpoint to rebuild it on this model anyway"
    )
    message = for_people("Restoring world-1", wrong)
    assert not technical(message.text) and "another model" in message.text
    assert "allow_other_checkpoint" in message.details
    damaged = for_people("Opening w", SessionFileError("session.json: turns[3].image: missing"))
    assert not technical(damaged.text) and "turns[3].image" in damaged.details
    bug = for_people("Predict", KeyError("x"))
    assert "inside the app" in bug.text and bug.details == "KeyError: 'x'"
    plain = for_people("Opening a.zip", "a.zip: not a zip archive")
    assert plain.text == "Opening a.zip failed: a.zip: not a zip archive" and not plain.details
    assert technical("turns[3].image") and technical("use_snapshot") and not technical("beat 3")
    assert os.path.sep not in for_people("x", wrong).text.split("failed:")[0]

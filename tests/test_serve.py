"""The HTTP API in-process (FastAPI's TestClient) on the tiny checkpoint: every verb, the
queue, progress events, cancellation, bad requests, the token, restoring from disk, and
RemoteSession against a local Session. A real uvicorn process (kill -9 and restart) is
in test_serve_process.py."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from api_client import FAST, LOCAL, new_session, ok, session_turns
from fastapi.testclient import TestClient
from PIL import Image

from workbench import chains, store
from workbench.cli.main import main
from workbench.client import RemoteError, RemoteSession
from workbench.params import GenerationParams
from workbench.server import app as server_app
from workbench.server import create_app
from workbench.server.run import is_loopback
from workbench.server.schemas import Params
from workbench.session import Session
from workbench.store import session_format

ROOT = Path(__file__).resolve().parent.parent
SLOW = {**FAST, "num_timesteps": 400}  # long enough to cancel half-way


def _png(size=(40, 32), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def client(pipe, tmp_path):
    return TestClient(create_app(pipe, tmp_path / "sessions"), base_url=LOCAL)


def _image(client, url) -> np.ndarray:
    response = client.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


def _started(client, sid, path, body) -> tuple[threading.Thread, list]:
    """POST in a thread (the request waits for its job); the response lands in the list."""
    out = []
    thread = threading.Thread(
        target=lambda: out.append(client.post(f"/sessions/{sid}/{path}", json=body))
    )
    thread.start()
    return thread, out


def _job(client, state: str, steps: int = 0, timeout: float = 60) -> dict:
    """The first unfinished job in `state` with more than `steps` denoising steps done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in ok(client.get("/jobs")):
            if job["state"] == state and job["steps_done"] >= steps:
                return job
        time.sleep(0.01)
    raise AssertionError(f"no {state} job within {timeout} s")


# -- every verb ---------------------------------------------------------------------------


def test_every_verb_end_to_end(client, tmp_path):
    sid = new_session(client)
    base = f"/sessions/{sid}"
    assert ok(client.post(f"{base}/text", json={"text": "a red fox"}))["turns"][0]["kind"] == "text"
    upload = client.post(
        f"{base}/image", files={"file": ("fox.png", _png(), "image/png")}, data={"seed": "2"}
    )
    added = ok(upload)["turns"][0]
    assert (added["role"], added["kind"], added["seed"]) == ("user", "image", 2)
    generated = ok(client.post(f"{base}/generate", json={"params": FAST}))["turns"]
    assert [(t["role"], t["kind"]) for t in generated] == [("model", "image")]
    assert _image(client, generated[0]["image"]).shape == (64, 64, 3)
    frames = ok(
        client.post(
            f"{base}/predict-frames",
            json={"frames": 2, "params": FAST, "window": 2, "schedule": "pyramid"},
        )
    )
    assert [t["forcing"]["index"] for t in frames["turns"]] == [0, 1]
    assert isinstance(
        ok(client.post(f"{base}/ask", json={"question": "What?", "params": FAST}))["text"], str
    )
    chosen = ok(client.post(f"{base}/choose", json={"question": "Red?", "options": ["yes", "no"]}))
    assert chosen["text"] in ("yes", "no") and len(chosen["scores"]) == 2
    thought = ok(client.post(f"{base}/think", json={"prompt": "a fox", "params": FAST}))
    assert (
        thought["text"] == thought["turns"][2]["text"] and thought["turns"][-1]["kind"] == "image"
    )
    chain_bodies = {
        "navigate": {"actions": ["forward"], "params": FAST},
        "rotate": {"degrees": 45, "steps": 1, "params": FAST},
        "predict": {"frames": 1, "params": FAST, "instruction": "next"},
        "story": {"beats": ["a fox sleeps"], "params": FAST, "caption": True},
        "edit": {"instruction": "make it blue", "params": FAST, "max_rounds": 1},
        "agent": {"goal": "find the door", "actions": ["forward"], "params": FAST, "max_steps": 1},
    }
    for name, body in chain_bodies.items():
        result = ok(client.post(f"{base}/chains/{name}", json=body))
        assert result["stopped"] in ("done", "judged_ok", "max_rounds", "goal", "max_steps")
        assert result["turns"], name
    turns = session_turns(client, sid)
    assert [t["index"] for t in turns] == list(range(len(turns)))
    count = len(turns)

    fork = ok(client.post(f"{base}/fork"))["new_session"]
    assert len(session_turns(client, fork)) == count
    ok(client.post(f"{base}/rewind", json={"n": 2}))
    assert (
        len(session_turns(client, sid)) == count - 2 and len(session_turns(client, fork)) == count
    )
    assert sorted(s["id"] for s in ok(client.get("/sessions"))) == sorted([sid, fork])

    export = client.post(f"{base}/export", json={"formats": ["png", "gif"]})
    assert export.status_code == 200 and export.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(export.content)).namelist()
    assert "frames.gif" in names and "metrics.json" in names and "frames/frame_0001.png" in names
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"{base}/archive").content))
    assert "session.json" in archive.namelist() and "kv.safetensors" in archive.namelist()
    report = ok(client.post(f"{base}/replay"))["report"]
    assert report["identical"] and all(f["psnr"] is None for f in report["frames"])

    assert client.delete(f"/sessions/{fork}").status_code == 204
    assert client.get(f"/sessions/{fork}").status_code == 404
    assert [s["id"] for s in ok(client.get("/sessions"))] == [sid]
    assert not (tmp_path / "sessions" / fork).exists()


def test_every_finished_turn_is_saved_and_a_new_server_restores_it(pipe, client, tmp_path):
    sid = new_session(client)
    ok(client.post(f"/sessions/{sid}/text", json={"text": "a lighthouse"}))
    first = ok(client.post(f"/sessions/{sid}/generate", json={"params": FAST}))["turns"][0]
    saved = store.load(tmp_path / "sessions" / sid, pipe)
    assert [(t.role, t.kind) for t in saved.turns] == [("user", "text"), ("model", "image")]

    again = TestClient(
        create_app(pipe, tmp_path / "sessions"), base_url=LOCAL
    )  # a restart, same folder
    assert session_turns(again, sid) == session_turns(client, sid)
    assert np.array_equal(_image(again, first["image"]), _image(client, first["image"]))
    nxt = {"params": {**FAST, "seed": 5}}
    after_restart = ok(again.post(f"/sessions/{sid}/generate", json=nxt))["turns"][0]
    straight_on = ok(client.post(f"/sessions/{sid}/generate", json=nxt))["turns"][0]
    assert np.array_equal(
        _image(again, after_restart["image"]), _image(client, straight_on["image"])
    )


def test_a_snapshot_that_does_not_match_is_rebuilt_from_the_turns(pipe, client, tmp_path):
    sid = new_session(client)
    ok(client.post(f"/sessions/{sid}/text", json={"text": "a lighthouse"}))
    ok(client.post(f"/sessions/{sid}/generate", json={"params": FAST}))
    folder = tmp_path / "sessions" / sid
    (folder / session_format.SNAPSHOT).write_bytes(b"torn")  # as if killed between the two renames
    (folder.parent / "not-a-session").mkdir()
    again = TestClient(create_app(pipe, tmp_path / "sessions"), base_url=LOCAL)
    assert session_turns(again, sid) == session_turns(client, sid)


def test_remote_session_makes_the_frames_of_a_local_session(pipe, client):
    params = GenerationParams(**FAST, seed=3)
    local, remote = Session(pipe), RemoteSession(client=client)
    outputs = []
    for session in (local, remote):
        session.add_image(Image.open(io.BytesIO(_png())), seed=1)
        session.add_text("walk on")
        frame = session.generate_image(params)
        frames = session.predict_frames(2, params, window=2, schedule="pyramid")
        thought, edited = session.think_then_generate("make it blue", params)
        fork = session.fork()
        session.rewind(1)
        branch = fork.generate_image(dataclasses.replace(params, seed=9))
        outputs.append([frame, *frames, edited, branch, thought, len(session.turns)])
    for here, there in zip(*outputs, strict=True):
        if isinstance(here, Image.Image):
            assert np.array_equal(np.asarray(here), np.asarray(there))
        else:
            assert here == there
    remote_turns = remote.turns
    assert [(t.role, t.kind, t.text, t.seed) for t in remote_turns] == [
        (t.role, t.kind, t.text, t.seed) for t in local.turns
    ]
    assert remote_turns[2].params == params


def test_remote_chain_equals_the_local_chain(pipe, client):
    params = GenerationParams(**FAST, seed=4)
    local = Session(pipe)
    local.add_text("a street")
    expected = chains.navigate(local, ["forward", "turn_left"], params)
    remote = RemoteSession(client=client)
    remote.add_text("a street")
    result = remote.chain("navigate", actions=["forward", "turn_left"], params=params)
    images = [t for t in remote.turns if t.image is not None]
    assert result["stopped"] == "done" and len(images) == len(expected.frames) == 2
    for frame, turn in zip(expected.frames, images, strict=True):
        assert np.array_equal(np.asarray(frame.image), np.asarray(turn.image))


# -- queue, progress, cancel --------------------------------------------------------------


def test_a_queued_request_streams_its_position_then_its_progress(client):
    service = client.app.state.service
    sid = new_session(client)
    ok(client.post(f"/sessions/{sid}/text", json={"text": "a fox"}))
    holder = threading.Event()  # someone else's generation holds the model
    assert service.gate.enter("someone else", holder)
    events: list[tuple[str, dict]] = []
    streaming = threading.Event()  # the first event arrived: the stream saw the queue

    def stream():
        with client.stream(
            "POST", f"/sessions/{sid}/generate?stream=true", json={"params": FAST}
        ) as r:
            name = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))
                    streaming.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert streaming.wait(60)
    queued = _job(client, "queued")
    assert queued["position"] == 1 and ok(client.get("/queue"))["waiting"] == 1
    service.gate.leave("someone else")
    thread.join(60)
    statuses = [data for name, data in events if name == "status"]
    assert statuses[0]["state"] == "queued" and statuses[0]["position"] == 1
    assert "running" in [s["state"] for s in statuses]
    # polled, so steps may be coalesced: never backwards, and the last status has them all
    steps = [s["steps_done"] for s in statuses]
    assert steps == sorted(steps)
    assert statuses[-1]["state"] == "done"
    assert statuses[-1]["steps_done"] == FAST["num_timesteps"] - 1
    name, result = events[-1]
    assert name == "result" and result["status"] == 200 and result["turns"][0]["kind"] == "image"
    assert result["queued_seconds"] > 0


def test_cancelling_a_running_generation_leaves_the_session_and_its_folder(client, tmp_path):
    sid = new_session(client)
    ok(client.post(f"/sessions/{sid}/text", json={"text": "a fox"}))
    manifest = (tmp_path / "sessions" / sid / session_format.MANIFEST).read_bytes()
    thread, out = _started(client, sid, "generate", {"params": SLOW})
    job = _job(client, "running", steps=2)
    assert ok(client.post(f"/jobs/{job['id']}/cancel"))["id"] == job["id"]
    thread.join(60)
    assert out[0].status_code == 409 and "cancelled" in out[0].json()["detail"]
    assert ok(client.get(f"/jobs/{job['id']}"))["state"] == "cancelled"
    assert len(session_turns(client, sid)) == 1
    assert (tmp_path / "sessions" / sid / session_format.MANIFEST).read_bytes() == manifest
    # the session goes on as if the cancelled turn had never been asked for
    service_session = client.app.state.service.registry.get(sid).session
    assert len(service_session.turns) == 1
    ok(client.post(f"/sessions/{sid}/generate", json={"params": FAST}))


def test_cancelling_a_chain_half_way_undoes_all_of_it(client):
    sid = new_session(client)
    ok(client.post(f"/sessions/{sid}/text", json={"text": "a street"}))
    per_frame = SLOW["num_timesteps"] - 1
    body = {"actions": ["forward", "turn_left"], "params": SLOW}
    thread, out = _started(client, sid, "chains/navigate", body)
    job = _job(client, "running", steps=per_frame + 1)  # the first frame is in the session
    client.post(f"/jobs/{job['id']}/cancel")
    thread.join(120)
    assert out[0].status_code == 409
    assert len(session_turns(client, sid)) == 1


def test_a_queued_job_cancelled_never_runs(client):
    service = client.app.state.service
    sid = new_session(client)
    assert service.gate.enter("someone else", threading.Event())
    thread, out = _started(client, sid, "text", {"text": "never"})
    job = _job(client, "queued")
    client.post(f"/jobs/{job['id']}/cancel")
    thread.join(30)
    service.gate.leave("someone else")
    assert out[0].status_code == 409 and session_turns(client, sid) == []


def test_a_turn_queued_behind_a_delete_does_not_bring_the_session_back(client, tmp_path):
    service = client.app.state.service
    sid = new_session(client)
    assert service.gate.enter("someone else", threading.Event())
    out = []
    deleting = threading.Thread(target=lambda: out.append(client.delete(f"/sessions/{sid}")))
    deleting.start()
    _job(client, "queued")
    adding, added = _started(client, sid, "text", {"text": "too late"})
    while len(ok(client.get("/jobs"))) < 2:
        time.sleep(0.01)
    service.gate.leave("someone else")
    deleting.join(30)
    adding.join(30)
    assert out[0].status_code == 204
    assert added[0].status_code == 404 and "deleted" in added[0].json()["detail"]
    assert not (tmp_path / "sessions" / sid).exists() and ok(client.get("/sessions")) == []


def test_a_failed_save_is_undone(client, monkeypatch):
    sid = new_session(client)
    registry = client.app.state.service.registry

    def broken(_entry):
        raise OSError("disk full")

    monkeypatch.setattr(registry, "commit", broken)
    response = TestClient(client.app, base_url=LOCAL, raise_server_exceptions=False).post(
        f"/sessions/{sid}/text", json={"text": "lost"}
    )
    assert response.status_code == 500 and "disk full" in response.json()["detail"]
    assert "Traceback" not in response.text
    assert registry.get(sid).session.turns == [] and session_turns(client, sid) == []


# -- bad requests -------------------------------------------------------------------------


def _bad_requests(sid: str) -> list[tuple[str, str, dict, int, str]]:
    base = f"/sessions/{sid}"
    png = ("x.png", _png(), "image/png")
    return [
        (
            "POST",
            f"{base}/generate",
            {"content": b"{", "headers": {"content-type": "application/json"}},
            422,
            "json_invalid",
        ),
        ("POST", f"{base}/generate", {"json": {"params": FAST, "steps": 3}}, 422, "steps"),
        (
            "POST",
            f"{base}/generate",
            {"json": {"params": {"num_timesteps": "3"}}},
            422,
            "num_timesteps",
        ),
        (
            "POST",
            f"{base}/generate",
            {"json": {"params": {"num_timesteps": 1}}},
            422,
            "must be an integer between 2 and 1000, got 1",
        ),
        ("POST", f"{base}/generate", {"json": {"params": {"height": 64}}}, 422, "height and width"),
        ("POST", f"{base}/text", {"json": {"text": 5}}, 422, "text"),
        ("POST", f"{base}/text", {"json": {}}, 422, "missing"),
        ("POST", f"{base}/rewind", {"json": {"n": 7}}, 400, "cannot rewind"),
        (
            "POST",
            f"{base}/chains/predict",
            {"json": {"frames": 1, "params": FAST, "window": 2}},
            400,
            "window 2",
        ),
        (
            "POST",
            f"{base}/chains/navigate",
            {"json": {"actions": ["fly"], "params": FAST}},
            400,
            "fly",
        ),
        ("POST", f"{base}/chains/teleport", {"json": {}}, 404, "Not Found"),
        (
            "POST",
            f"{base}/image",
            {"files": {"file": ("x.png", b"not an image", "image/png")}},
            400,
            "not an image",
        ),
        (
            "POST",
            f"{base}/image",
            {"files": {"file": ("big.png", b"\0" * (20 * 2**20 + 1), "image/png")}},
            413,
            "20 MB",
        ),
        ("POST", f"{base}/image", {"files": {"file": png}, "data": {"seed": "-1"}}, 422, "seed"),
        ("POST", f"{base}/image", {"data": {"seed": "1"}}, 422, "file"),
        ("POST", f"{base}/export", {"json": {"formats": ["pdf"]}}, 400, "pdf"),
        ("GET", "/sessions/0123456789abcdef0123456789abcdef", {}, 404, "no session"),
        (
            "POST",
            "/sessions/0123456789abcdef0123456789abcdef/text",
            {"json": {"text": "x"}},
            404,
            "no session",
        ),
        ("GET", "/sessions/..%2F..%2Fetc%2Fpasswd", {}, 404, ""),
        ("GET", "/sessions/....", {}, 422, "session_id"),
        ("GET", f"/sessions/{sid.upper()}", {}, 422, "session_id"),
        ("GET", f"{base}/turns/99/image", {}, 404, "no image"),
        ("GET", "/jobs/nope", {}, 404, "no job"),
        ("POST", "/sessions", {"json": {"limit": {"policy": "drop_vit"}}}, 422, "max_tokens"),
    ]


def test_bad_requests_get_their_4xx_and_change_nothing(client, tmp_path):
    sid = new_session(client)
    ok(client.post(f"/sessions/{sid}/text", json={"text": "a fox"}))
    ok(client.post(f"/sessions/{sid}/generate", json={"params": FAST}))
    folder = tmp_path / "sessions" / sid
    before = (session_turns(client, sid), (folder / session_format.MANIFEST).read_bytes())
    for method, url, kwargs, status, says in _bad_requests(sid):
        response = client.request(method, url, **kwargs)
        assert response.status_code == status, (url, kwargs.get("json"), response.text)
        assert says in response.text, (url, response.text)
        assert "Traceback" not in response.text
        assert (
            session_turns(client, sid),
            (folder / session_format.MANIFEST).read_bytes(),
        ) == before, url
    assert [s["id"] for s in ok(client.get("/sessions"))] == [sid]


def test_bodies_past_the_limit_or_chunked_are_refused(pipe, tmp_path, monkeypatch):
    monkeypatch.setattr(server_app, "MAX_BODY_BYTES", 1000)
    client = TestClient(create_app(pipe, tmp_path), base_url=LOCAL)
    sid = new_session(client)
    big = client.post(f"/sessions/{sid}/text", json={"text": "x" * 2000})
    assert big.status_code == 413 and "1000 bytes" in big.json()["detail"]
    chunked = client.post(f"/sessions/{sid}/text", content=iter([b'{"text": "x"}']))
    assert chunked.status_code == 411
    assert session_turns(client, sid) == []


def test_a_token_is_required_on_every_request_when_set(pipe, tmp_path):
    client = TestClient(create_app(pipe, tmp_path, token="s3cret"))
    for url in ("/sessions", "/docs", "/openapi.json", "/health"):
        assert client.get(url).status_code == 401
        assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get(url, headers={"Authorization": "s3cret"}).status_code == 401
    assert client.post("/sessions").status_code == 401 and not any(tmp_path.iterdir())
    good = {"Authorization": "Bearer s3cret"}
    assert client.get("/health", headers=good).status_code == 200
    client.headers.update(good)
    remote = RemoteSession(client=client)
    remote.add_text("hello")
    assert [t.text for t in remote.turns] == ["hello"]


def test_remote_errors_name_the_field(client):
    remote = RemoteSession(client=client)
    with pytest.raises(RemoteError, match=r"422: body\.text: Input should be a valid string"):
        remote.add_text(5)
    with pytest.raises(RemoteError, match="400: cannot rewind 3"):
        remote.rewind(3)


def test_the_openapi_schema_has_every_verb_and_the_request_models(client):
    schema = ok(client.get("/openapi.json"))
    paths = schema["paths"]
    for verb in (
        "text",
        "image",
        "generate",
        "predict-frames",
        "ask",
        "choose",
        "think",
        "fork",
        "rewind",
        "export",
        "replay",
        "archive",
    ):
        assert f"/sessions/{{session_id}}/{verb}" in paths, verb
    for chain in ("navigate", "rotate", "predict", "story", "edit", "agent"):
        assert f"/sessions/{{session_id}}/chains/{chain}" in paths
    params = schema["components"]["schemas"]["Params"]
    assert params["additionalProperties"] is False and "num_timesteps" in params["properties"]
    assert client.get("/docs").status_code == 200


def test_params_has_exactly_the_fields_of_generation_params():
    names = {f.name for f in dataclasses.fields(GenerationParams)}
    assert set(Params.model_fields) == names
    assert Params(num_timesteps=7, height=64, width=64).build() == GenerationParams(
        num_timesteps=7, height=64, width=64
    )


# -- the command --------------------------------------------------------------------------


def test_serve_refuses_an_open_address_without_a_token(capsys, monkeypatch, tmp_path):
    """The refusal comes before the model loads or a server starts: both are replaced by a
    raise here, so a weakened address check fails at once instead of serving forever."""
    import uvicorn

    import bagel.checkpoint

    def started(*_, **__):
        raise AssertionError("the address check let 0.0.0.0 through without a token")

    monkeypatch.setattr(bagel.checkpoint, "load", started)
    monkeypatch.setattr(uvicorn, "run", started)
    monkeypatch.setattr(uvicorn.Server, "run", started)
    monkeypatch.delenv("WORKBENCH_TOKEN", raising=False)
    model = str(tmp_path / "model")  # never made: the refusal comes first
    assert main(["serve", "--host", "0.0.0.0", "--model", model]) == 2
    assert "give a token" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_the_remote_session_script_of_docs_serve_runs(pipe, tmp_path, monkeypatch, capsys):
    """docs/serve.md's python block, against a real uvicorn server on a loopback port."""
    import re
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(pipe, tmp_path), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        monkeypatch.setenv("WORKBENCH_URL", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("WORKBENCH_TOKEN", raising=False)
        text = (ROOT / "docs" / "serve.md").read_text()
        block = re.findall(r"```python\n(.*?)```", text, re.S)[-1]
        exec(compile(block, "docs/serve.md", "exec"), {})
    finally:
        server.should_exit = True
        thread.join(30)
    out = capsys.readouterr().out
    assert "step 5/5" in out and "(64, 64) True" in out
    assert "done [('user', 'text'), ('model', 'image')]" in out and out.rstrip().endswith("True")


def test_serve_without_the_extra_says_how_to_get_it(monkeypatch, capsys):
    import sys

    for name in [m for m in sys.modules if m.startswith("workbench.server")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now fails
    assert main(["serve"]) == 2
    assert "pip install 'bagel-workbench[serve]'" in capsys.readouterr().err


def test_serve_loads_the_model_in_the_chosen_profile(monkeypatch, pipe, tmp_path):
    import uvicorn

    from workbench.cli import serving

    loaded = []

    def load(model, device, dtype, profile=None, compile=False):
        loaded.append((model, device, dtype, profile, compile))
        return pipe

    monkeypatch.setattr(serving, "load_model", load)
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, *a, **kw: None)
    argv = ["serve", "--model", "M", "--profile", "int8", "--sessions", str(tmp_path / "s")]
    assert main(argv) == 0
    assert main([*argv, "--compile"]) == 0
    assert loaded == [("M", "cpu", None, "int8", False), ("M", "cpu", None, "int8", True)]

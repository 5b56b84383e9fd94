"""The HTTP API against a hostile client (in-process, FastAPI's TestClient): a job whose
thread dies of a BaseException, texts past the bound, non-finite numbers, malformed
bodies, foreign Host and Origin headers, costs refused before any work, per-client
limits. The real-process cases (SIGTERM, kill -9 mid-chain) are in
test_serve_process.py."""

from __future__ import annotations

import threading
import time

import pytest
from api_client import FAST, LOCAL, new_session, ok, session_turns
from fastapi.testclient import TestClient

from workbench.params import MAX_TEXT_CHARS
from workbench.server import create_app
from workbench.store import session_format


@pytest.fixture
def client(pipe, tmp_path):
    return TestClient(create_app(pipe, tmp_path / "sessions"), base_url=LOCAL)


class Panic(BaseException):
    """What pyo3 raises when a native library panics: a BaseException, no Exception."""


def test_a_job_whose_thread_dies_of_a_base_exception_is_answered_and_ends(
    client, pipe, monkeypatch, tmp_path
):
    sid = new_session(client)
    ok(client.post(f"/sessions/{sid}/text", json={"text": "a fox"}))
    manifest = (tmp_path / "sessions" / sid / session_format.MANIFEST).read_bytes()
    frame = pipe.tokenizer.frame

    def panicking(text, *args, **kwargs):
        if "panic" in text:
            raise Panic("called `Result::unwrap()` on an `Err` value")
        return frame(text, *args, **kwargs)

    monkeypatch.setattr(pipe.tokenizer, "frame", panicking)
    out = []
    thread = threading.Thread(
        target=lambda: out.append(client.post(f"/sessions/{sid}/text", json={"text": "panic now"}))
    )
    thread.start()
    thread.join(60)
    assert out, "the request was never answered"
    response = out[0]
    assert response.status_code == 500, response.text
    body = response.json()
    assert "Panic" in body["detail"] and "Traceback" not in response.text
    assert ok(client.get("/jobs")) == []  # nothing left running
    assert ok(client.get(f"/jobs/{body['job']}"))["state"] == "failed"
    # the session and its folder are as before; the next job runs
    assert len(session_turns(client, sid)) == 1
    assert (tmp_path / "sessions" / sid / session_format.MANIFEST).read_bytes() == manifest
    ok(client.post(f"/sessions/{sid}/text", json={"text": "a second fox"}))
    assert len(session_turns(client, sid)) == 2


def test_texts_past_the_bound_are_refused_before_the_tokenizer(client, pipe, monkeypatch):
    sid = new_session(client)
    seen = []
    frame = pipe.tokenizer.frame
    monkeypatch.setattr(pipe.tokenizer, "frame", lambda text, *a: seen.append(text) or frame(text))
    long = "a" + " " * MAX_TEXT_CHARS + "b"
    for path, body in [
        ("text", {"text": long}),
        ("ask", {"question": long}),
        ("choose", {"question": "which?", "options": ["yes", long]}),
        ("chains/rotate", {"degrees": 5, "steps": 1, "template": long + "{degrees}"}),
        ("chains/story", {"beats": [long]}),
    ]:
        response = client.post(f"/sessions/{sid}/{path}", json=body)
        assert response.status_code == 422, (path, response.text[:300])
        assert f"at most {MAX_TEXT_CHARS} characters" in response.text, response.text[:300]
        assert len(response.content) < 2000  # the text is not echoed back
    assert seen == [] and session_turns(client, sid) == []


def test_a_session_refuses_a_text_past_the_bound(pipe):
    from bagel.errors import InputError
    from workbench.session import Session

    session = Session(pipe)
    with pytest.raises(InputError, match=f"at most {MAX_TEXT_CHARS} are allowed"):
        session.add_text("x" * (MAX_TEXT_CHARS + 1))
    with pytest.raises(InputError, match="option 2 is"):
        session.choose("which?", ["yes", "y" * (MAX_TEXT_CHARS + 1)])
    assert session.turns == []
    session.add_text("x" * 50)  # well inside
    assert len(session.turns) == 1


def test_a_chain_cancelled_after_saving_a_frame_leaves_its_folder_as_before(client, pipe, tmp_path):
    from workbench import store

    sid = new_session(client)
    ok(client.post(f"/sessions/{sid}/text", json={"text": "a street"}))
    slow = {**FAST, "num_timesteps": 400}
    body = {"actions": ["forward", "turn_left"], "params": slow}
    out = []
    thread = threading.Thread(
        target=lambda: out.append(client.post(f"/sessions/{sid}/chains/navigate", json=body))
    )
    thread.start()
    deadline = time.monotonic() + 120
    while len(session_turns(client, sid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)  # the chain's first frame is finished and saved
    saved = store.load(tmp_path / "sessions" / sid, pipe, use_snapshot=False)  # being written
    assert len(saved.turns) >= 3
    job = ok(client.get("/jobs"))[0]
    client.post(f"/jobs/{job['id']}/cancel")
    thread.join(120)
    assert out[0].status_code == 409
    assert len(session_turns(client, sid)) == 1
    assert [t.text for t in store.load(tmp_path / "sessions" / sid, pipe).turns] == ["a street"]


def _raw(client, url: str, body: bytes):
    return client.post(url, content=body, headers={"content-type": "application/json"})


def test_malformed_bodies_get_a_json_422_saying_why(client):
    sid = new_session(client)
    base = f"/sessions/{sid}"
    cases = [
        (f"{base}/generate", b'{"params": {"num_timesteps": 1e400}}', "num_timesteps"),
        (f"{base}/generate", b'{"params": {"height": NaN, "width": 64}}', "height"),
        (f"{base}/generate", b'{"params": {"cfg_text_scale": Infinity}}', "finite number"),
        (f"{base}/generate", b'{"params": {"timestep_shift": -1e400}}', "finite number"),
        (f"{base}/export", b'{"fps": NaN}', "finite number"),
        (f"{base}/chains/rotate", b'{"degrees": 1e400, "steps": 1}', "finite number"),
        (f"{base}/text", b'{"text": "caf\xe9"}', "not UTF-8 text (byte 0xe9 at offset 13)"),
        (f"{base}/text", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (f"{base}/text", b'{"text": "x"', "JSON decode error"),
        (f"{base}/text", b"[1, 2]", "valid dictionary"),
    ]
    for url, body, says in cases:
        response = _raw(client, url, body)
        assert response.status_code == 422, (body[:60], response.text[:300])
        assert says in response.text, (body[:60], response.text[:300])
        assert response.headers["content-type"] == "application/json"
    assert session_turns(client, sid) == []


def test_a_tokenless_server_answers_only_loopback_hosts(client, tmp_path):
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "10.0.0.1"):
        refused = client.get("/sessions", headers={"Host": host})
        assert refused.status_code == 403, host
        assert "loopback" in refused.json()["detail"]
        assert client.post("/sessions", headers={"Host": host}).status_code == 403
    assert not (tmp_path / "sessions").exists() or not any((tmp_path / "sessions").iterdir())
    for host in ("127.0.0.1", "127.0.0.1:8000", "localhost:1234", "[::1]:8000", "[::1]"):
        assert client.get("/sessions", headers={"Host": host}).status_code == 200, host


def test_a_tokenless_server_refuses_requests_from_other_sites_pages(client, tmp_path):
    refused = [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},  # a sandboxed frame or a local file
        {"Origin": "http://127.0.0.1.evil.example:8000"},
        {"Sec-Fetch-Site": "cross-site"},
    ]
    for headers in refused:
        response = client.post("/sessions", headers=headers)
        assert response.status_code == 403, headers
        assert "another site" in response.json()["detail"]
    png = b"\x89PNG\r\n\x1a\n"  # a multipart upload, as a form on another site would send
    sid = new_session(client)  # no Origin: curl, httpx, a script
    upload = client.post(
        f"/sessions/{sid}/image",
        files={"file": ("x.png", png, "image/png")},
        headers={"Origin": "http://evil.example"},
    )
    assert upload.status_code == 403
    assert [s["id"] for s in ok(client.get("/sessions"))] == [sid]
    for headers in ({"Origin": "http://localhost:8000"}, {"Sec-Fetch-Site": "same-origin"}):
        assert client.post("/sessions", headers=headers).status_code == 201, headers


def test_with_a_token_any_host_is_answered_but_only_with_the_token(pipe, tmp_path):
    client = TestClient(create_app(pipe, tmp_path, token="s3cret"), base_url="http://box.lan")
    assert client.get("/sessions").status_code == 401
    good = {"Authorization": "Bearer s3cret", "Origin": "http://evil.example"}
    assert client.get("/sessions", headers=good).status_code == 200


def test_costs_past_the_models_positions_are_refused_before_anything_is_queued(client):
    sid = new_session(client)
    client.post(f"/sessions/{sid}/text", json={"text": "a street"})
    png = _png_bytes()
    ok(client.post(f"/sessions/{sid}/image", files={"file": ("s.png", png, "image/png")}))
    long = "walk on " * 1500  # one instruction of some 3000 tokens: two do not fit 4096
    cases = [
        ("predict-frames", {"frames": 1_000_000, "params": FAST}, "frames"),
        ("chains/predict", {"frames": 1_000_000, "params": FAST}, "frames"),
        ("chains/navigate", {"actions": ["forward"] * 100_000, "params": FAST}, "actions"),
        ("chains/rotate", {"degrees": 5, "steps": 10**9, "params": FAST}, "steps"),
        ("chains/story", {"beats": ["a beat"] * 5000, "params": FAST}, "beats"),
        ("chains/edit", {"instruction": "red", "max_rounds": 10**6, "params": FAST}, "max_rounds"),
        ("chains/agent", {"goal": "the river", "max_steps": 10**6, "params": FAST}, "max_steps"),
        (
            "chains/navigate",
            {"actions": ["forward", "forward"], "templates": {"forward": long}, "params": FAST},
            "actions",
        ),
    ]
    limit = client.app.state.service.pipe.config.llm.max_position_embeddings
    for path, body, field in cases:
        response = client.post(f"/sessions/{sid}/{path}", json=body)
        assert response.status_code == 422, (path, response.text[:300])
        detail = response.json()["detail"][0]
        assert detail["loc"] == ["body", field], detail
        assert f"the model's limit is {limit} positions" in detail["msg"], detail
        assert ok(client.get("/jobs")) == []  # nothing was queued
    assert len(session_turns(client, sid)) == 2


def test_a_rotate_template_cannot_expand_without_bound(client):
    sid = new_session(client)
    for template, says in [
        ("{degrees:>99999999999}", "width or precision over 100"),
        ("{degrees:.100000}", "width or precision over 100"),
        ("{degrees:>{axis}}", "may not hold a placeholder"),
        ("{degrees.__class__}", "unknown placeholder"),
    ]:
        body = {"degrees": 5, "steps": 1, "template": template}
        response = client.post(f"/sessions/{sid}/chains/rotate", json=body)
        assert response.status_code == 422, (template, response.text)
        assert says in response.text, response.text
    assert ok(client.get("/jobs")) == []


def test_a_session_refuses_a_frames_run_that_cannot_fit_before_drawing_its_noise(pipe):
    from bagel.errors import InputError
    from workbench.params import GenerationParams
    from workbench.session import Session

    session = Session(pipe)
    session.add_text("a street")
    params = GenerationParams(num_timesteps=3, height=64, width=64)
    # a million frames' noise would take gigabytes; the refusal comes first
    with pytest.raises(InputError, match="more positions do not fit"):
        session.predict_frames(1_000_000, params)
    assert len(session.turns) == 1


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 32), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_client_over_its_share_of_jobs_is_answered_429(pipe, tmp_path):
    client = TestClient(create_app(pipe, tmp_path, max_jobs=2), base_url=LOCAL)
    service = client.app.state.service
    sid = new_session(client)
    assert service.gate.enter("someone else", threading.Event())  # the model is busy
    waiting = []
    for text in ("one", "two"):
        thread = threading.Thread(
            target=lambda t=text: waiting.append(
                client.post(f"/sessions/{sid}/text", json={"text": t})
            )
        )
        thread.start()
        waiting.append(thread)
    while len(ok(client.get("/jobs"))) < 2:
        time.sleep(0.01)
    refused = client.post(f"/sessions/{sid}/text", json={"text": "three"})
    assert refused.status_code == 429, refused.text
    assert "2 jobs queued or running" in refused.json()["detail"]
    assert len(ok(client.get("/jobs"))) == 2  # the refused one was never queued
    service.gate.leave("someone else")
    for thread in [w for w in waiting if isinstance(w, threading.Thread)]:
        thread.join(60)
    assert [t["text"] for t in session_turns(client, sid)] in (["one", "two"], ["two", "one"])
    ok(client.post(f"/sessions/{sid}/text", json={"text": "three"}))  # room again


def test_a_client_over_its_share_of_sessions_is_answered_429(pipe, tmp_path):
    client = TestClient(create_app(pipe, tmp_path, max_sessions=2), base_url=LOCAL)
    first, _second = new_session(client), new_session(client)
    for response in (client.post("/sessions"), client.post(f"/sessions/{first}/fork")):
        assert response.status_code == 429, response.text
        assert "already has 2 sessions" in response.json()["detail"]
    assert len(ok(client.get("/sessions"))) == 2
    assert client.delete(f"/sessions/{first}").status_code == 204
    new_session(client)  # room again


def test_a_queued_request_whose_client_went_away_is_cancelled(pipe, tmp_path):
    import socket

    import httpx
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(pipe, tmp_path)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    service = app.state.service
    url = f"http://127.0.0.1:{port}"
    try:
        while not server.started:
            time.sleep(0.05)
        sid = httpx.post(f"{url}/sessions").json()["id"]
        assert service.gate.enter("someone else", threading.Event())  # the model is busy
        body = {"text": "nobody waits for this"}
        with pytest.raises(httpx.ReadTimeout):  # a plain request, given up
            httpx.post(f"{url}/sessions/{sid}/text", json=body, timeout=1.0)
        _left_the_line(service)
        with pytest.raises(httpx.ReadTimeout):  # a stream, given up while queued
            with httpx.stream(
                "POST", f"{url}/sessions/{sid}/text", params={"stream": "true"}, json=body
            ) as response:
                for line in response.iter_lines():
                    if '"queued"' in line:
                        raise httpx.ReadTimeout("given up")  # closes the connection
        _left_the_line(service)
        service.gate.leave("someone else")
        assert httpx.get(f"{url}/sessions/{sid}").json()["turns"] == []
    finally:
        service.gate.leave("someone else")
        server.should_exit = True
        thread.join(30)


def _left_the_line(service) -> None:
    deadline = time.monotonic() + 30
    while service.unfinished() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.unfinished() == []


def test_an_import_refusal_names_the_upload_not_the_servers_folders(client):
    import io
    import json
    import zipfile

    sid = new_session(client)
    ok(client.post(f"/sessions/{sid}/text", json={"text": "a fox"}))
    saved = zipfile.ZipFile(io.BytesIO(client.get(f"/sessions/{sid}/archive").content))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in saved.namelist():
            data = saved.read(name)
            if name.endswith("session.json"):  # made by another model
                data = json.dumps({**json.loads(data), "checkpoint": "another"}).encode()
            archive.writestr(name, data)
    files = {"file": ("walk.zip", buffer.getvalue(), "application/zip")}
    response = client.post("/sessions/import", files=files)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail.startswith("walk.zip/") and "checkpoint another" in detail, detail
    assert "import-" not in detail and "/tmp" not in detail


def test_a_remote_progress_callback_sees_every_step(client):
    from workbench.client import RemoteSession
    from workbench.params import GenerationParams

    remote = RemoteSession(client=client)
    remote.add_text("a fox")
    seen = []
    params = GenerationParams(num_timesteps=12, height=64, width=64)
    remote.generate_image(params, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(k, 11) for k in range(1, 12)]


def test_a_json_body_past_its_own_limit_is_refused_unread(client):
    sid = new_session(client)
    body = b'{"text": "' + b"x" * (16 * 2**20) + b'"}'
    response = _raw(client, f"/sessions/{sid}/text", body)
    assert response.status_code == 413 and "JSON body" in response.json()["detail"]
    assert session_turns(client, sid) == []


def test_an_import_cancelled_while_queued_leaves_no_staging_folder(client, monkeypatch, tmp_path):
    import tempfile

    sid = new_session(client)
    ok(client.post(f"/sessions/{sid}/text", json={"text": "a fox"}))
    archive = client.get(f"/sessions/{sid}/archive").content
    staging = tmp_path / "staging"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    service = client.app.state.service
    assert service.gate.enter("someone else", threading.Event())  # the model is busy
    out = []
    files = {"file": ("walk.zip", archive, "application/zip")}
    thread = threading.Thread(
        target=lambda: out.append(client.post("/sessions/import", files=files))
    )
    thread.start()
    while not ok(client.get("/jobs")):
        time.sleep(0.01)
    assert any(staging.iterdir())  # unpacked, waiting
    client.post(f"/jobs/{ok(client.get('/jobs'))[0]['id']}/cancel")
    thread.join(60)
    service.gate.leave("someone else")
    assert out[0].status_code == 409
    assert not any(staging.iterdir())

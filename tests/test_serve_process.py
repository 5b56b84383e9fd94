"""`workbench serve` as a real uvicorn process on a free loopback port, with a token:
RemoteSession over the network with streamed progress and cancellation, then kill -9 in
the middle of a generation and a restart that brings back every finished turn."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from workbench import store
from workbench.client import RemoteError, RemoteSession
from workbench.params import GenerationParams
from workbench.session import Session

ROOT = Path(__file__).resolve().parent.parent
FAST = GenerationParams(num_timesteps=3, height=64, width=64)
SLOW = GenerationParams(num_timesteps=400, height=64, width=64)
TOKEN = "t0ken"  # given in the environment, as `--token` would be
START_SECONDS = 180  # import torch, load the model, restore the sessions: shared CPUs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tiny_dir: Path, sessions: Path, tmp: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (tmp / f"server-{self.port}.log").open("w")
        command = [sys.executable, "-m", "workbench", "serve", "--model", str(tiny_dir)]
        command += ["--port", str(self.port), "--sessions", str(sessions)]
        env = {**os.environ, "WORKBENCH_TOKEN": TOKEN}
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self._log()
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 401:
                    return  # up, and refusing requests without the token
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(f"the server did not start in {START_SECONDS} s\n{self._log()}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.log.close()

    def _log(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()


@pytest.fixture
def server(tiny_dir, tmp_path):
    servers = []

    def start() -> Server:
        servers.append(Server(tiny_dir, tmp_path / "sessions", tmp_path))
        return servers[-1]

    yield start
    for s in servers:
        if s.process.poll() is None:
            s.kill()


def _same(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_a_remote_session_survives_kill_9_with_every_finished_turn(server, pipe):
    first = server()
    with pytest.raises(RemoteError, match="401"):
        RemoteSession(first.url, token="wrong")
    remote = RemoteSession(first.url, token=TOKEN)
    local = Session(pipe)
    image = Image.new("RGB", (40, 32), (30, 120, 200))
    steps = []
    for session in (local, remote):
        session.add_image(image, seed=1)
        session.add_text("walk forward")
    made = remote.generate_image(FAST, progress=lambda done, total: steps.append((done, total)))
    assert _same(made, local.generate_image(FAST))
    # streamed as the steps finished; status is polled, so a fast step may be coalesced
    assert steps == sorted(set(steps)) and steps[-1] == (2, 2) and {t for _, t in steps} == {2}

    # a progress callback that raises cancels the job on the server: nothing changes
    class Stop(Exception):
        pass

    def stop(done, _total):
        if done >= 2:
            raise Stop

    with pytest.raises(Stop):
        remote.generate_image(SLOW, progress=stop)
    assert len(remote.turns) == 3

    # kill -9 while a generation runs: the finished turns are on disk, the running one not
    killed_mid_turn = threading.Thread(target=lambda: _swallow(remote.generate_image, SLOW))
    killed_mid_turn.start()
    _wait_running(first.url)
    first.kill()
    killed_mid_turn.join(30)

    second = server()
    again = RemoteSession(second.url, session_id=remote.id, token=TOKEN)
    turns = again.turns
    assert [(t.role, t.kind) for t in turns] == [
        ("user", "image"),
        ("user", "text"),
        ("model", "image"),
    ]
    assert _same(turns[2].image, made)
    # and it goes on exactly where a session that never stopped goes on
    nxt = GenerationParams(num_timesteps=3, height=64, width=64, seed=7)
    local.add_text("turn left")
    again.add_text("turn left")
    assert _same(again.generate_image(nxt), local.generate_image(nxt))
    second.kill()


def test_sigterm_with_a_job_running_cancels_it_and_stops_the_server(server, pipe, tmp_path):
    first = server()
    remote = RemoteSession(first.url, token=TOKEN)
    remote.add_image(Image.new("RGB", (40, 32), (30, 120, 200)), seed=1)
    remote.add_text("walk forward")
    answered = []
    running = threading.Thread(
        target=lambda: answered.append(_outcome(remote.generate_image, SLOW))
    )
    running.start()
    _wait_running(first.url)
    first.process.send_signal(signal.SIGTERM)
    first.process.wait(10)  # the promise of docs/serve.md; raises TimeoutExpired past it
    running.join(30)
    assert answered and "409" in answered[0]  # the request was answered: cancelled
    # the session is as it was before the job, and loads
    saved = store.load(tmp_path / "sessions" / remote.id, pipe)
    assert [(t.role, t.kind) for t in saved.turns] == [("user", "image"), ("user", "text")]


def test_a_kill_mid_chain_keeps_the_chains_finished_turns(server, pipe, tmp_path):
    first = server()
    remote = RemoteSession(first.url, token=TOKEN)
    remote.add_image(Image.new("RGB", (40, 32), (30, 120, 200)), seed=1)
    params = GenerationParams(num_timesteps=100, height=64, width=64)
    actions = ["forward", "turn_left", "forward"]
    chain = threading.Thread(
        target=lambda: _swallow(lambda: remote.chain("navigate", actions=actions, params=params))
    )
    chain.start()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    deadline = time.monotonic() + 120
    shown = []
    while len(shown) < 3 and time.monotonic() < deadline:  # the first frame is finished
        shown = httpx.get(f"{first.url}/sessions/{remote.id}", headers=headers).json()["turns"]
        time.sleep(0.02)
    jobs = httpx.get(f"{first.url}/jobs", headers=headers).json()
    frame = httpx.get(f"{first.url}{shown[2]['image']}", headers=headers).content
    first.kill()
    chain.join(30)
    assert [j["title"] for j in jobs] == ["navigate"]  # killed mid-chain ...
    assert len(shown) < 2 + 2 * len(actions)  # ... with its first turns saved, not all
    saved = store.load(tmp_path / "sessions" / remote.id, pipe)
    kinds = [(t.role, t.kind) for t in saved.turns]
    assert len(kinds) >= 3 and kinds[:3] == [
        ("user", "image"),
        ("user", "text"),
        ("model", "image"),
    ]
    assert _same(saved.turns[2].image, Image.open(io.BytesIO(frame)))


def _outcome(call, *args) -> str:
    try:
        call(*args)
    except (httpx.HTTPError, RemoteError) as err:
        return str(err)
    return "done"


def _swallow(call, *args) -> None:
    try:
        call(*args)
    except (httpx.HTTPError, RemoteError):
        pass  # the server died under it


def _wait_running(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        jobs = httpx.get(f"{url}/jobs", headers=headers, timeout=5).json()
        if any(j["state"] == "running" and j["steps_done"] >= 1 for j in jobs):
            return
        time.sleep(0.02)
    raise AssertionError("no generation started")

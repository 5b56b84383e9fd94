"""A bounded load test of `workbench serve` on loopback: concurrent clients, each a chain.

    .venv/bin/python bench/bench_serve.py [--clients 16] [--turns 5] [--steps 4] [--size 64]

Starts `workbench serve` on the tiny checkpoint (a subprocess on a free 127.0.0.1 port,
its own sessions folder in a temporary directory), then runs `--clients` threads at
once, each with its own session: one input image, then `--turns` turns, each one
`navigate` chain request of one action (its instruction text, then a generated frame).
The total is fixed (clients x turns requests); every request has a timeout; the server
is stopped at the end.

Printed: turns per second over the whole run, p50 / p95 of the latency per turn as the
client sees it, of the time each turn waited in the server's queue and of the time it ran
(both reported by the server), and the same turns run in this process on one local
Session for comparison. Then every session's transcript is checked, on the server and on
disk after the server stopped: exactly the expected turns in order (no turn lost, none
applied twice). Nothing is asserted on time.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from PIL import Image  # noqa: E402

from bagel.checkpoint import load  # noqa: E402
from bagel.tiny import make_tiny  # noqa: E402
from workbench import chains, store  # noqa: E402
from workbench.client import RemoteSession  # noqa: E402
from workbench.params import GenerationParams  # noqa: E402
from workbench.session import Session  # noqa: E402

ACTIONS = ("forward", "turn_left", "turn_right", "back", "look_up")
REQUEST_TIMEOUT = 600.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="num_timesteps per frame")
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    params = GenerationParams(num_timesteps=args.steps, height=args.size, width=args.size)
    image = Image.new("RGB", (args.size, args.size), (40, 90, 160))
    with tempfile.TemporaryDirectory() as tmp:
        tiny = make_tiny(Path(tmp) / "tiny", seed=0)
        sessions = Path(tmp) / "sessions"
        server, url = _start(tiny, sessions)
        try:
            print(f"server up at {url}; {args.clients} clients x {args.turns} turns", flush=True)
            results, wall = _load_test(url, args, params, image)
            ids = [r["id"] for r in results]
            served = {i: _plain(RemoteSession(url, session_id=i).turns) for i in ids}
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
        pipe = load(tiny, device="cpu", dtype="float32")
        local = _local(pipe, args, params, image)
        on_disk = {i: _plain(store.load(sessions / i, pipe).turns) for i in ids}
    _report(args, results, wall, local)
    _check(args, results, served, on_disk)


def _start(tiny: Path, sessions: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "workbench", "serve", "--model", str(tiny)]
    command += ["--port", str(port), "--sessions", str(sessions)]
    env = {**os.environ, "WORKBENCH_TOKEN": ""}
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(900):  # at most about 3 minutes
        try:
            httpx.get(f"{url}/health", timeout=1)
            return server, url
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not start")


def _load_test(url: str, args, params: GenerationParams, image: Image.Image):
    results: list[dict] = [{} for _ in range(args.clients)]
    barrier = threading.Barrier(args.clients)

    def client(k: int) -> None:
        remote = RemoteSession(url, timeout=REQUEST_TIMEOUT)
        remote.add_image(image, seed=k)
        out = results[k]
        out.update(id=remote.id, latency=[], queued=[], ran=[])
        barrier.wait(REQUEST_TIMEOUT)
        for turn in range(args.turns):
            started = time.perf_counter()
            result = remote.chain("navigate", actions=[_action(k, turn)], params=params)
            out["latency"].append(time.perf_counter() - started)
            out["queued"].append(result["queued_seconds"])
            out["ran"].append(result["run_seconds"])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(REQUEST_TIMEOUT * args.turns)
    return results, time.perf_counter() - started


def _local(pipe, args, params: GenerationParams, image: Image.Image) -> list[float]:
    """The same turns in this process on one Session each, no HTTP, no queue, no saves."""
    times = []
    for k in range(args.clients):
        session = Session(pipe)
        session.add_image(image, seed=k)
        for turn in range(args.turns):
            started = time.perf_counter()
            chains.navigate(session, [_action(k, turn)], params)
            times.append(time.perf_counter() - started)
    return times


def _action(client: int, turn: int) -> str:
    return ACTIONS[(client + turn) % len(ACTIONS)]


def _plain(turns) -> list[tuple[str, str, str | None]]:
    return [(t.role, t.kind, t.text) for t in turns]


def _pct(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def _report(args, results: list[dict], wall: float, local: list[float]) -> None:
    latency = [x for r in results for x in r.get("latency", [])]
    queued = [x for r in results for x in r.get("queued", [])]
    ran = [x for r in results for x in r.get("ran", [])]
    total = args.clients * args.turns
    print(
        f"\nturns finished: {len(latency)} of {total} in {wall:.1f} s: {len(latency) / wall:.2f} turns/s"
    )
    print("per turn (s)       p50     p95")
    for name, values in (
        ("latency", latency),
        ("queue wait", queued),
        ("run (server)", ran),
        ("local, no HTTP", local),
    ):
        print(f"{name:<16} {_pct(values, 50):7.3f} {_pct(values, 95):7.3f}")
    print(f"run time per turn, server / local (p50): {_pct(ran, 50) / _pct(local, 50):.2f}")


def _check(args, results: list[dict], served: dict, on_disk: dict) -> None:
    bad = []
    for k, r in enumerate(results):
        expected = [("user", "image", None)]
        for turn in range(args.turns):
            expected += [
                ("user", "text", chains.DEFAULT_TEMPLATES[_action(k, turn)]),
                ("model", "image", None),
            ]
        for where, turns in (("server", served[r["id"]]), ("disk", on_disk[r["id"]])):
            if turns != expected:
                bad.append(f"client {k} ({where}): {len(turns)} turns, expected {len(expected)}")
    print(
        "transcripts: "
        + ("every session exactly as sent (server and disk)" if not bad else "; ".join(bad))
    )
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

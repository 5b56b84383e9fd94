"""`workbench serve`: load the model once, restore the saved sessions, serve on uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket

from bagel.errors import InputError

TOKEN_VARIABLE = "WORKBENCH_TOKEN"
# on SIGTERM, requests still open this long after their jobs were cancelled are dropped
# (a job in a phase without a cancel check: its session stays as before it)
SHUTDOWN_SECONDS = 5


def serve(args: argparse.Namespace, load) -> int:
    """Check the address and token, load the model (`load(model, device, dtype, profile)`), serve."""
    token = args.token or os.environ.get(TOKEN_VARIABLE) or None
    if not is_loopback(args.host) and token is None:
        raise InputError(
            f"--host {args.host} is reachable from other machines: give a token "
            f"(--token or ${TOKEN_VARIABLE}); every request must then carry it"
        )
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be in 1..65535, got {args.port}")
    for option, value in (("--max-jobs", args.max_jobs), ("--max-sessions", args.max_sessions)):
        if value < 1:
            raise InputError(f"{option} must be at least 1, got {value}")
    import uvicorn

    from workbench.server.app import create_app

    pipe = load(args.model, args.device or "cpu", args.dtype, args.profile, args.compile)
    app = create_app(pipe, args.sessions, token, args.max_jobs, args.max_sessions)
    restored = len(app.state.service.registry.all())
    print(f"{restored} session(s) restored from {args.sessions}", flush=True)
    print(f"serving on http://{args.host}:{args.port} (API docs at /docs)", flush=True)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
    )
    service = app.state.service

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            """SIGTERM / Ctrl-C: cancel every job (each stops at its next step, its
            session as before it), so the requests waiting on them are answered and the
            server can stop."""
            service.cancel_all()
            super().handle_exit(sig, frame)

    Server(config).run()
    return 0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: whatever it resolves to
        try:
            return all(
                ipaddress.ip_address(info[4][0]).is_loopback
                for info in socket.getaddrinfo(host, None)
            )
        except OSError:
            return False

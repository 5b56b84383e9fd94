"""The checks every request passes before any route sees it. A plain ASGI middleware, so
streamed responses (server-sent events) pass through untouched.

- With a token: `Authorization: Bearer <token>` (compared in constant time), else 401.
- Without one (a loopback-only server): the `Host` must name the loopback interface
  (127.0.0.1, localhost, [::1], any port), so a web page whose name was rebound to
  127.0.0.1 (DNS rebinding) is refused; and a request a browser sends for another
  site's page (an `Origin` that is not a loopback origin, or `Sec-Fetch-Site:
  cross-site`) is refused: 403.
- The body size limit, by Content-Length (16 MB for a JSON body); chunked bodies are
  refused (411).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from workbench.server.service import CALLER

MAX_JSON_BYTES = 16 * 2**20  # a verb's arguments; uploads (images, archives) are multipart


class Guard:
    def __init__(self, app: ASGIApp, token: str | None, max_body_bytes: int):
        self.app, self.max_body = app, max_body_bytes
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.expected is not None:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):  # constant time
                await _reply(send, 401, "a valid 'Authorization: Bearer <token>' is required")
                return
        else:
            refusal = foreign(headers)
            if refusal is not None:
                await _reply(send, 403, refusal)
                return
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            await _reply(send, 411, "send the body with a Content-Length (not chunked)")
            return
        length = headers.get(b"content-length", b"0")
        if not length.isdigit():
            await _reply(send, 400, "Content-Length must be a number")
            return
        if int(length) > self.max_body:  # the server reads no more than Content-Length says
            await _reply(send, 413, f"the request body is over the {self.max_body} bytes allowed")
            return
        json_body = headers.get(b"content-type", b"").lower().startswith(b"application/json")
        if json_body and int(length) > MAX_JSON_BYTES:  # texts, lists: no upload is JSON
            await _reply(send, 413, f"a JSON body is over the {MAX_JSON_BYTES} bytes allowed")
            return
        CALLER.set(Request(scope, receive))  # who asks, for the per-client limits
        await self.app(scope, receive, send)


def foreign(headers: dict[bytes, bytes]) -> str | None:
    """Why a tokenless server refuses this request (None: it does not): a Host other than
    the loopback interface, or a browser request made by another site's page."""
    host = headers.get(b"host", b"").decode("latin-1")
    if not _loopback_host(host):
        return (
            f"Host {_shown(host)} is not this machine's loopback address: a server without "
            "a token answers only requests to 127.0.0.1, localhost or [::1]"
        )
    origin = headers.get(b"origin")
    if origin is not None and not _loopback_origin(origin.decode("latin-1")):
        return (
            f"a request from the web page of another site (Origin "
            f"{_shown(origin.decode('latin-1'))}) is refused by a server without a token"
        )
    if headers.get(b"sec-fetch-site", b"").lower() == b"cross-site":
        return "a request from the web page of another site (cross-site) is refused"
    return None


def _loopback_host(host: str) -> bool:
    """127.0.0.1, localhost or [::1] (any loopback address), with or without a port."""
    if host.startswith("["):  # an IPv6 address
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return False
        port = rest[1:]
    else:
        name, colon, port = host.partition(":")
        if colon and not port:
            return False
    if port and not port.isdigit():
        return False
    return _loopback_name(name.lower())


def _loopback_origin(origin: str) -> bool:
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and _loopback_name(parts.hostname or "")


def _loopback_name(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _shown(value: str) -> str:
    """A header value for a message: quoted, control characters escaped, cut short."""
    return repr(value[:80] + ("…" if len(value) > 80 else ""))


async def _reply(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

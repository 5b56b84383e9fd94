"""The checks every request passes before any route sees it: the bearer token (when the
server has one) and the body size limit (by Content-Length; chunked bodies are refused). A plain ASGI middleware, so streamed responses
(server-sent events) pass through untouched."""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send


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
        await self.app(scope, receive, send)


async def _reply(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

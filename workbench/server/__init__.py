"""`workbench serve`: the HTTP API over persistent sessions (docs/serve.md).

Needs the `serve` extra (fastapi, uvicorn, python-multipart, httpx)."""

from workbench.server.app import create_app

__all__ = ["create_app"]

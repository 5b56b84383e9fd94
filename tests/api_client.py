"""What the HTTP API tests share: fast generation settings, the loopback base URL a
tokenless server answers, and small helpers over FastAPI's TestClient."""

from __future__ import annotations

FAST = {"num_timesteps": 3, "height": 64, "width": 64, "max_think_tokens": 4}
LOCAL = "http://127.0.0.1:8000"  # a tokenless server answers only loopback Host names


def new_session(client) -> str:
    response = client.post("/sessions")
    assert response.status_code == 201, response.text
    return response.json()["id"]


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def session_turns(client, sid) -> list[dict]:
    return ok(client.get(f"/sessions/{sid}"))["turns"]

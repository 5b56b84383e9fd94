"""`RemoteSession`: a session on a `workbench serve` server, with the verbs of `Session`.

    from workbench.client import RemoteSession
    session = RemoteSession("http://127.0.0.1:8000")          # a new session there
    session.add_text("a lighthouse at dusk")
    frame = session.generate_image(GenerationParams(seed=3))  # a PIL image, as locally

A script written against `Session` runs unchanged on a `RemoteSession`: the same verbs
take the same arguments and return the same values (images come back as lossless PNG, so
the same seeds give the same pixels). A `progress` callback gets every denoising step as
the server streams them; if it raises, the job is cancelled (the session stays as it was)
and the exception propagates, as with a local session. The chains of workbench.chains
run server-side through `chain(kind, ...)`.

Needs the `serve` extra (httpx).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bagel.errors import BagelError
from bagel.inputs import ProgressFn
from workbench.files import write_atomic
from workbench.params import ContextLimit, GenerationParams
from workbench.transcript import Forcing, Turn

DEFAULT_URL = "http://127.0.0.1:8000"


class RemoteError(BagelError):
    """The server refused a request (status 4xx) or failed (5xx); `detail` says why."""

    def __init__(self, status: int, detail: Any):
        super().__init__(f"{status}: {_describe(detail)}")
        self.status, self.detail = status, detail


class RemoteSession:
    """A session kept by a server; `session_id` None makes a new one there.

    Args:
        url: the server's address.
        token: the server's bearer token, if it has one.
        client: an httpx.Client to use instead (e.g. FastAPI's TestClient).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        session_id: str | None = None,
        token: str | None = None,
        limit: ContextLimit | None = None,
        timeout: float = 3600.0,
        client: httpx.Client | None = None,
    ):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = client or httpx.Client(base_url=url, headers=headers, timeout=timeout)
        if session_id is None:
            body = {"limit": asdict(limit)} if limit is not None else None
            session_id = self._call("POST", "/sessions", body)["id"]
        self.id = session_id

    # -- the verbs of Session -----------------------------------------------------------

    def add_text(self, text: str) -> None:
        self._verb("text", {"text": text})

    def add_image(self, image: Image.Image | str | bytes, seed: int = 0) -> Image.Image:
        """Upload an image (a PIL image, a file path or encoded bytes); returns the image
        as the session holds it (resized RGB)."""
        files = {"file": ("image.png", _encoded(image), "application/octet-stream")}
        result = self._call("POST", f"/sessions/{self.id}/image", files=files, data={"seed": seed})
        return self._image(result["turns"][-1])

    def generate_image(
        self, params: GenerationParams | None = None, progress: ProgressFn | None = None
    ) -> Image.Image:
        result = self._verb("generate", {"params": _params(params)}, progress)
        return self._image(result["turns"][-1])

    def predict_frames(
        self,
        frames: int,
        params: GenerationParams | None = None,
        window: int = 1,
        schedule: str = "autoregressive",
        progress: ProgressFn | None = None,
    ) -> list[Image.Image]:
        body = {"frames": frames, "params": _params(params), "window": window, "schedule": schedule}
        result = self._verb("predict-frames", body, progress)
        return [self._image(t) for t in result["turns"] if t["image"]]

    def ask(self, question: str, params: GenerationParams | None = None) -> str:
        return self._verb("ask", {"question": question, "params": _params(params)})["text"]

    def choose(self, question: str, options: list[str]) -> tuple[str, list[float]]:
        result = self._verb("choose", {"question": question, "options": list(options)})
        return result["text"], result["scores"]

    def think_then_generate(
        self,
        prompt: str,
        params: GenerationParams | None = None,
        progress: ProgressFn | None = None,
    ) -> tuple[str, Image.Image]:
        result = self._verb("think", {"prompt": prompt, "params": _params(params)}, progress)
        return result["text"], self._image(result["turns"][-1])

    def fork(self) -> RemoteSession:
        new_id = self._verb("fork", None)["new_session"]
        return RemoteSession(session_id=new_id, client=self.http)

    def rewind(self, n: int = 1) -> None:
        self._verb("rewind", {"n": n})

    @property
    def turns(self) -> list[Turn]:
        """The transcript as Turns (roles, kinds, texts, images, params, seeds, scores)."""
        return [self._turn(t) for t in self._call("GET", f"/sessions/{self.id}")["turns"]]

    # -- server-side extras -------------------------------------------------------------

    def chain(self, kind: str, progress: ProgressFn | None = None, **args: Any) -> dict:
        """Run a chain of workbench.chains (navigate, rotate, predict, story, edit, agent)
        with its arguments; `params` may be GenerationParams. Returns the server's result
        (the turns added, `stopped`)."""
        if isinstance(args.get("params"), GenerationParams):
            args["params"] = _params(args["params"])
        return self._verb(f"chains/{kind}", args, progress)

    def export(self, path: str | Path, formats: list[str] | None = None, **options: Any) -> Path:
        """Write the export zip (the formats of `workbench export`) to path."""
        body = {"formats": formats, **options}
        return _write(path, self._raw("POST", f"/sessions/{self.id}/export", body).content)

    def archive(self, path: str | Path) -> Path:
        """Write the saved session folder, zipped, to path (`workbench replay` takes it
        unzipped)."""
        return _write(path, self._raw("GET", f"/sessions/{self.id}/archive").content)

    def replay(self) -> dict:
        """Regenerate the saved session on the server; its per-frame report."""
        return self._verb("replay", None)["report"]

    def delete(self) -> None:
        self._raw("DELETE", f"/sessions/{self.id}")

    # -- plumbing -----------------------------------------------------------------------

    def _verb(self, path: str, body: dict | None, progress: ProgressFn | None = None) -> dict:
        url = f"/sessions/{self.id}/{path}"
        if progress is None:
            return self._call("POST", url, body)
        return self._streamed(url, body, progress)

    def _streamed(self, url: str, body: dict | None, progress: ProgressFn) -> dict:
        """Follow the job's server-sent events; a raising callback cancels the job."""
        error: BaseException | None = None
        shown = (0, 0)
        with self.http.stream("POST", url, json=body, params={"stream": "true"}) as response:
            if response.status_code != 200:
                response.read()
                raise RemoteError(response.status_code, _detail(response))
            for name, data in _events(response.iter_lines()):
                if name == "status":
                    steps = (data["steps_done"], data["steps_total"])
                    if error is None and steps[1] and steps != shown:
                        try:
                            for done in _steps_between(shown, steps):
                                progress(done, steps[1])
                        except BaseException as err:  # cancel, then see it through
                            error = err
                            self._call("POST", f"/jobs/{data['job']}/cancel")
                        shown = steps
                    continue
                if error is not None:
                    raise error
                if name == "result":
                    return data
                raise RemoteError(data.pop("status"), data["detail"])
        raise RemoteError(502, "the event stream ended without a result")

    def _call(self, method: str, url: str, body: dict | None = None, **kwargs: Any) -> dict:
        return self._raw(method, url, body, **kwargs).json()

    def _raw(self, method: str, url: str, body: dict | None = None, **kwargs: Any):
        if body is not None:
            kwargs["json"] = body
        response = self.http.request(method, url, **kwargs)
        if response.status_code >= 400:
            raise RemoteError(response.status_code, _detail(response))
        return response

    def _image(self, turn: dict) -> Image.Image:
        image = Image.open(io.BytesIO(self._raw("GET", turn["image"]).content))
        image.load()
        return image

    def _turn(self, t: dict) -> Turn:
        return Turn(
            t["role"],
            t["kind"],
            text=t["text"],
            image=self._image(t) if t["image"] else None,
            params=GenerationParams(**t["params"]) if t["params"] else None,
            seed=t["seed"],
            seconds=t["seconds"],
            options=tuple(t["options"]) if t["options"] is not None else None,
            scores=tuple(t["scores"]) if t["scores"] is not None else None,
            forcing=Forcing(**t["forcing"]) if t["forcing"] else None,
        )


def _steps_between(shown: tuple[int, int], now: tuple[int, int]) -> range:
    """The steps done since `shown`, one by one: the server's status events are polled,
    so one event may report several steps (the callback still sees each)."""
    if now[0] == 0:  # a phase before its first step (thinking): reported as it is
        return range(0, 1)
    same_count = now[1] == shown[1] and now[0] > shown[0]
    return range(shown[0] + 1 if same_count else 1, now[0] + 1)


def _params(params: GenerationParams | None) -> dict | None:
    if params is None:
        return None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(params).items()}


def _encoded(image: Image.Image | str | bytes) -> bytes:
    if isinstance(image, bytes):
        return image
    if isinstance(image, str | Path):
        return Path(image).read_bytes()
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _events(lines) -> Any:
    """(event name, parsed data) of a text/event-stream."""
    name, data = None, []
    for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and name is not None:
            yield name, json.loads("\n".join(data))
            name, data = None, []


def _detail(response: httpx.Response) -> Any:
    try:
        return response.json().get("detail", response.text)
    except ValueError:
        return response.text


def _describe(detail: Any) -> str:
    if isinstance(detail, list):  # FastAPI's validation errors: where and what
        return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
    return str(detail)


def _write(path: str | Path, data: bytes) -> Path:
    return write_atomic(Path(path), lambda tmp: tmp.write_bytes(data))

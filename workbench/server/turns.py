"""The verbs on one session: add turns (Session's verbs and workbench.chains), fork,
rewind, export, replay.

Each route checks its request (pydantic, then GenerationParams and friends) before it
queues anything, then queues the verb as one task. `?stream=true` answers with
server-sent events (queue position, denoising steps) ending with the result; otherwise
the request waits for the result. Either way the task can be cancelled with
POST /jobs/{id}/cancel (its id is in every event and result).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from PIL import Image

from bagel.errors import BagelError
from workbench import chains, store
from workbench.app.files import MAX_IMAGE_MB, MB, pack_folder, read_image
from workbench.chains import checks as chain_checks
from workbench.export import FORMATS, export_session
from workbench.params import GenerationParams
from workbench.server import costs
from workbench.server import schemas as s
from workbench.server.replies import answer
from workbench.server.service import Done, Service, Verb, caller
from workbench.server.sessions import ID

SessionId = Annotated[str, PathParam(pattern=f"^{ID.pattern}$", description="a server-made id")]
Stream = Annotated[bool, Query(description="stream progress as server-sent events")]
RESULT = {"model": s.TurnResult, "description": "the turns added (or a text/event-stream)"}

router = APIRouter(prefix="/sessions/{session_id}", responses={200: RESULT})


class TooLarge(BagelError):
    """An upload over its size limit: a 413."""


async def read_upload(file: UploadFile, max_mb: int) -> bytes:
    """An uploaded file's bytes, refused past max_mb without reading further."""
    data = await file.read(max_mb * MB + 1)
    if len(data) > max_mb * MB:
        raise TooLarge(f"{file.filename}: over the {max_mb} MB limit")
    return data


def _service(request: Request) -> Service:
    return request.app.state.service


Svc = Annotated[Service, Depends(_service)]


async def _queue(
    service: Service, session_id: str, title: str, verb: Verb, stream: bool = False, saves=True
) -> Response:
    entry = service.registry.get(session_id)  # a 404 before anything is queued
    return await answer(service.on_session(entry, title, verb, saves), stream)


def _params(
    params: s.Params | None, base: GenerationParams | None = None
) -> GenerationParams | None:
    """None stays None (the verb's own default); else checked now, naming the field."""
    if params is None:
        return None
    try:
        return params.build(base)
    except BagelError as err:  # GenerationParams names the field first
        name = str(err).split()[0]
        raise s.FieldError(
            f"params.{name}" if name in s.Params.model_fields else "params", str(err)
        ) from err


# -- the Session verbs --------------------------------------------------------------------


@router.post("/text")
async def add_text(session_id: SessionId, body: s.Text, service: Svc, stream: Stream = False):
    verb = lambda ses, _p: _nothing(ses.add_text(body.text))  # noqa: E731
    return await _queue(service, session_id, "text", verb, stream)


@router.post("/image")
async def add_image(
    session_id: SessionId,
    file: Annotated[UploadFile, File(description=f"an image, at most {MAX_IMAGE_MB} MB")],
    service: Svc,
    seed: Annotated[int, Form(ge=0)] = 0,
    stream: Stream = False,
):
    service.registry.get(session_id)
    data = await read_upload(file, MAX_IMAGE_MB)
    image: Image.Image = await run_in_threadpool(
        read_image, file.filename or "upload", data, service.pipe
    )
    verb = lambda ses, _p: _nothing(ses.add_image(image, seed))  # noqa: E731
    return await _queue(service, session_id, "image", verb, stream)


@router.post("/generate")
async def generate_image(
    session_id: SessionId, service: Svc, body: s.Generate | None = None, stream: Stream = False
):
    params = _params(body.params if body else None)
    verb = lambda ses, p: _nothing(ses.generate_image(params, p))  # noqa: E731
    return await _queue(service, session_id, "generate", verb, stream)


@router.post("/predict-frames")
async def predict_frames(
    session_id: SessionId, body: s.PredictFrames, service: Svc, stream: Stream = False
):
    params = _params(body.params)
    costs.check_frames(service.registry.get(session_id).session, "frames", body.frames)

    def verb(ses, progress) -> Done:
        ses.predict_frames(body.frames, params, body.window, body.schedule, progress)
        return Done()

    return await _queue(service, session_id, "predict frames", verb, stream)


@router.post("/ask")
async def ask(session_id: SessionId, body: s.Ask, service: Svc, stream: Stream = False):
    params = _params(body.params)
    verb = lambda ses, _p: Done(text=ses.ask(body.question, params))  # noqa: E731
    return await _queue(service, session_id, "ask", verb, stream)


@router.post("/choose")
async def choose(session_id: SessionId, body: s.Choose, service: Svc, stream: Stream = False):
    def verb(ses, _progress) -> Done:
        text, scores = ses.choose(body.question, body.options)
        return Done(text=text, scores=scores)

    return await _queue(service, session_id, "choose", verb, stream)


@router.post("/think")
async def think_then_generate(
    session_id: SessionId, body: s.Think, service: Svc, stream: Stream = False
):
    params = _params(body.params)

    def verb(ses, progress) -> Done:
        thought, _ = ses.think_then_generate(body.prompt, params, progress)
        return Done(text=thought)

    return await _queue(service, session_id, "think", verb, stream)


# -- chains -------------------------------------------------------------------------------


async def _chain(
    service: Service,
    session_id: str,
    kind: str,
    args: dict[str, Any],
    params: GenerationParams | None,
    frames: tuple[str, int],
    stream: bool,
) -> Response:
    """Queue `workbench.chains.<kind>(session, **args, params=params)`, saving the
    session after every step (a kill mid-chain keeps the finished turns). First refused
    at once if its turns cannot fit the positions left (`frames`: the field that counts
    its frames, and their most)."""
    entry = service.registry.get(session_id)
    chain = getattr(chains, kind)
    counted = params or (GenerationParams.edit() if kind == "edit" else GenerationParams())
    await run_in_threadpool(costs.check_chain, entry.session, *frames, kind, args, counted)

    def verb(ses, progress) -> Done:
        saved = lambda: service.registry.commit(entry)  # noqa: E731
        result = chain(ses, **args, params=params, progress=progress, on_turn=saved)
        return Done(stopped=result.stopped)

    return await answer(service.on_session(entry, kind, verb), stream)


@router.post("/chains/navigate")
async def navigate(session_id: SessionId, body: s.Navigate, service: Svc, stream: Stream = False):
    args = {"actions": body.actions, "templates": body.templates}
    frames = ("actions", len(body.actions))
    return await _chain(service, session_id, "navigate", args, _params(body.params), frames, stream)


@router.post("/chains/rotate")
async def rotate(session_id: SessionId, body: s.Rotate, service: Svc, stream: Stream = False):
    if body.template is not None:  # before anything formats it
        s.check(lambda: chain_checks.check_template(body.template), "template")
    args = {"degrees": body.degrees, "steps": body.steps, "axis": body.axis}
    args["template"] = body.template
    frames = ("steps", body.steps)
    return await _chain(service, session_id, "rotate", args, _params(body.params), frames, stream)


@router.post("/chains/predict")
async def predict(session_id: SessionId, body: s.Predict, service: Svc, stream: Stream = False):
    args = body.model_dump(include={"frames", "mode", "window", "schedule", "instruction"})
    frames = ("frames", body.frames)
    return await _chain(service, session_id, "predict", args, _params(body.params), frames, stream)


@router.post("/chains/story")
async def story(session_id: SessionId, body: s.Story, service: Svc, stream: Stream = False):
    args = {"beats": body.beats, "caption": body.caption}
    frames = ("beats", len(body.beats))
    return await _chain(service, session_id, "story", args, _params(body.params), frames, stream)


@router.post("/chains/edit")
async def edit(session_id: SessionId, body: s.Edit, service: Svc, stream: Stream = False):
    params = _params(body.params, GenerationParams.edit())
    args = body.model_dump(include={"instruction", "think", "max_rounds"})
    frames = ("max_rounds", body.max_rounds)
    return await _chain(service, session_id, "edit", args, params, frames, stream)


@router.post("/chains/agent")
async def agent(session_id: SessionId, body: s.Agent, service: Svc, stream: Stream = False):
    actions = chains.ACTIONS if body.actions is None else body.actions
    args = {"goal": body.goal, "actions": actions, "max_steps": body.max_steps}
    args["templates"] = body.templates
    frames = ("max_steps", body.max_steps)
    return await _chain(service, session_id, "agent", args, _params(body.params), frames, stream)


# -- branches, files, replay --------------------------------------------------------------


@router.post("/rewind")
async def rewind(session_id: SessionId, body: s.Rewind, service: Svc):
    verb = lambda ses, _p: _nothing(ses.rewind(body.n))  # noqa: E731
    return await _queue(service, session_id, "rewind", verb)


@router.post("/fork")
async def fork(session_id: SessionId, service: Svc):
    """A new session sharing this one's past (its id is `new_session`)."""
    owner = caller()
    service.registry.check_room(owner)  # at once; checked again when the fork is added
    verb = lambda ses, _p: Done(new_session=service.registry.add(ses.fork(), owner).id)  # noqa: E731
    return await _queue(service, session_id, "fork", verb, saves=False)


@router.post(
    "/export", responses={200: {"content": {"application/zip": {}}, "description": "a zip"}}
)
async def export(session_id: SessionId, service: Svc, body: s.Export | None = None):
    """The session's frames in the formats of `workbench export`, as one zip."""
    body = body or s.Export()
    formats = sorted(FORMATS) if body.formats is None else body.formats

    def verb(ses, progress) -> Done:  # a cancel stops it between its formats
        with tempfile.TemporaryDirectory(prefix="export-") as tmp:
            out = export_session(
                ses,
                Path(tmp) / "export",
                formats,
                fps=body.fps,
                include=body.include,
                progress=progress,
            )
            return Done(download=pack_folder(out), filename=f"{session_id}-export.zip")

    return await _queue(service, session_id, "export", verb, saves=False)


@router.post("/replay")
async def replay(session_id: SessionId, service: Svc, stream: Stream = False):
    """Regenerate the saved session's model turns and compare them (`workbench replay`)."""
    entry = service.registry.get(session_id)

    def verb(_ses, progress) -> Done:
        report = store.replay(entry.folder, service.pipe, progress=progress)
        return Done(report=report.to_dict())  # replay_report.json's form: standard JSON

    return await _queue(service, session_id, "replay", verb, stream, saves=False)


def _nothing(_value: object) -> Done:
    return Done()

"""The FastAPI application: sessions, their files, jobs and the queue.

`create_app` builds it over a loaded pipeline and a sessions folder; the verbs that add
turns are in turns.py. Errors are JSON with a `detail`: FastAPI's own list (field
location, message) for a malformed body, a string otherwise. No traceback reaches a
client.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import workbench
from bagel.errors import BagelError
from bagel.pipeline import BagelPipeline
from workbench import store
from workbench.app.files import MAX_ARCHIVE_MB, MB, pack_folder, unpack_session
from workbench.server import turns
from workbench.server.guard import Guard
from workbench.server.replies import answer, job_out, turn_out
from workbench.server.schemas import (
    FieldError,
    Health,
    JobOut,
    NewSession,
    Queue,
    SessionOut,
    Transcript,
    TurnResult,
    check,
)
from workbench.server.service import MAX_JOBS, MAX_SESSIONS, Done, Service, caller
from workbench.server.sessions import NotFound, Registry, TooMany
from workbench.server.turns import SessionId, TooLarge, read_upload
from workbench.store import session_format

log = logging.getLogger(__name__)

MAX_BODY_BYTES = MAX_ARCHIVE_MB * MB + MB  # the largest upload (a session archive) + form


def create_app(
    pipe: BagelPipeline,
    sessions_dir: str | Path,
    token: str | None = None,
    max_jobs: int | None = MAX_JOBS,
    max_sessions: int | None = MAX_SESSIONS,
) -> FastAPI:
    """The API over `pipe`, keeping sessions in `sessions_dir` (restored from it now).

    token: when given, every request must carry `Authorization: Bearer <token>`.
    max_jobs, max_sessions: per client (an address), the most queued and running jobs
    and the most sessions it made; past them a request is a 429 (None: no limit).
    """
    registry = Registry(Path(sessions_dir), pipe, max_sessions)
    for problem in registry.restore():
        log.warning(problem)
    service = Service(pipe, registry, max_jobs)
    app = FastAPI(
        title="BAGEL Workbench",
        version=workbench.__version__,
        description="Persistent multimodal KV sessions over one BAGEL model (docs/serve.md).",
    )
    app.state.service = service
    app.add_middleware(Guard, token=token, max_body_bytes=MAX_BODY_BYTES)
    _add_error_handlers(app)
    _add_session_routes(app, service)
    app.include_router(turns.router)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def malformed(_request: Request, err: RequestValidationError) -> JSONResponse:
        """Each problem's location, message and type; never the input itself (a 10 MB
        text, or a number JSON cannot write, such as an infinity)."""
        return JSONResponse({"detail": [_problem(e) for e in err.errors()]}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def unparsable(request: Request, err: StarletteHTTPException) -> JSONResponse:
        """A JSON body the parser gave up on (FastAPI's 400 "error parsing the body") is a
        422 saying why, like any other malformed body; other HTTP errors keep theirs."""
        why = _unparsable(err.__cause__)
        if err.status_code == 400 and why is not None:
            return JSONResponse(
                {"detail": [{"loc": ["body"], "msg": why, "type": "json_invalid"}]}, 422
            )
        return await http_exception_handler(request, err)

    @app.exception_handler(NotFound)
    async def unknown(_request: Request, err: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, 404)

    @app.exception_handler(FieldError)
    async def bad_field(_request: Request, err: FieldError) -> JSONResponse:
        where = ["body", *err.field.split(".")]
        detail = [{"loc": where, "msg": err.problem, "type": "value_error"}]
        return JSONResponse({"detail": detail}, 422)

    @app.exception_handler(TooMany)
    async def too_many(_request: Request, err: TooMany) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, 429)

    @app.exception_handler(TooLarge)
    async def too_large(_request: Request, err: TooLarge) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, 413)

    @app.exception_handler(BagelError)
    async def refused(_request: Request, err: BagelError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, 400)

    @app.exception_handler(Exception)
    async def bug(_request: Request, err: Exception) -> JSONResponse:
        log.exception("request failed")
        return JSONResponse({"detail": f"internal error: {type(err).__name__}"}, 500)


def _unparsable(cause: BaseException | None) -> str | None:
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not UTF-8 text (byte 0x{cause.object[cause.start]:02x} at offset {cause.start})"
    if isinstance(cause, RecursionError):
        return "the JSON is nested too deeply"
    return None


def _problem(error: dict) -> dict:
    msg, reason = error["msg"], (error.get("ctx") or {}).get("error")
    if error["type"] == "json_invalid" and reason:
        msg = f"{msg}: {reason}"
    return {"loc": list(error["loc"]), "msg": msg, "type": error["type"]}


def _add_session_routes(app: FastAPI, service: Service) -> None:
    registry, pipe = service.registry, service.pipe

    @app.get("/health")
    def health() -> Health:
        return Health(
            checkpoint=pipe.identity,
            device=pipe.device.type,
            dtype=str(pipe.net.dtype).removeprefix("torch."),
            sessions=len(registry.all()),
            queue=_queue(service),
        )

    @app.get("/queue")
    def queue() -> Queue:
        return _queue(service)

    @app.get("/sessions")
    def list_sessions() -> list[SessionOut]:
        return [SessionOut(id=e.id, turns=len(e.turns)) for e in registry.all()]

    @app.post("/sessions", status_code=201)
    def create_session(body: NewSession | None = None) -> SessionOut:
        limit = check(body.limit.build, "limit") if body and body.limit else None
        entry = registry.create(limit, owner=caller())
        return SessionOut(id=entry.id, turns=0)

    @app.post("/sessions/import", response_model=TurnResult)
    async def import_session(file: Annotated[UploadFile, File()]):
        """A saved session (a zip of its folder, as GET /sessions/{id}/archive or the app
        gives) becomes a new session here; its turns are re-encoded in the queue."""
        owner = caller()
        registry.check_room(owner)  # at once; checked again when the session is added
        data = await read_upload(file, MAX_ARCHIVE_MB)
        name = file.filename or "upload"
        staging = Path(tempfile.mkdtemp(prefix="import-"))
        try:
            folder = unpack_session(name, data, staging / "session")
            session_format.read_manifest(folder, pipe, allow_other_checkpoint=False)
        except BaseException as err:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(err, BagelError):
                raise _in_upload(err, staging, name) from err
            raise

        def work(progress) -> Done:
            try:  # re-encoding the turns: a cancel stops it after the current turn
                session = store.load(folder, pipe, use_snapshot=False, progress=progress)
            except BagelError as err:
                raise _in_upload(err, staging, name) from err
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            return Done(new_session=registry.add(session, owner).id)

        try:
            return await answer(service.on_model("import", work), stream=False)
        finally:  # also when the job never ran (cancelled while it waited)
            shutil.rmtree(staging, ignore_errors=True)

    @app.get("/sessions/{session_id}")
    def transcript(session_id: SessionId) -> Transcript:
        entry = registry.get(session_id)
        return Transcript(
            id=entry.id, turns=[turn_out(entry.id, i, t) for i, t in enumerate(entry.turns)]
        )

    @app.delete("/sessions/{session_id}", status_code=204)
    async def delete_session(session_id: SessionId) -> Response:
        entry = registry.get(session_id)

        def forget(_session, _progress) -> Done:
            registry.delete(entry)
            return Done()

        reply = await answer(service.on_session(entry, "delete", forget, saves=False), False)
        return reply if reply.status_code != 200 else Response(status_code=204)

    @app.get(
        "/sessions/{session_id}/turns/{index}/image",
        responses={200: {"content": {"image/png": {}}}},
        response_class=Response,
    )
    def turn_image(session_id: SessionId, index: int) -> Response:
        entry = registry.get(session_id)
        if not 0 <= index < len(entry.turns) or entry.turns[index].image is None:
            return JSONResponse({"detail": f"turn {index} of {session_id} has no image"}, 404)
        buffer = io.BytesIO()
        entry.turns[index].image.save(buffer, "PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    @app.get(
        "/sessions/{session_id}/archive",
        responses={200: {"content": {"application/zip": {}}}},
        response_class=Response,
    )
    async def archive(session_id: SessionId) -> Response:
        """The saved session folder as a zip (loads with workbench.store, replays with
        `workbench replay`)."""
        entry = registry.get(session_id)

        def pack(_session, _progress) -> Done:  # in the queue: no save runs meanwhile
            return Done(download=pack_folder(entry.folder), filename=f"{entry.id}.zip")

        return await answer(service.on_session(entry, "archive", pack, saves=False), False)

    @app.get("/jobs")
    def jobs() -> list[JobOut]:
        """The queued and running jobs, first in line first."""
        return [job_out(task) for task in service.unfinished()]

    @app.get("/jobs/{job_id}")
    def job(job_id: str) -> JobOut:
        return job_out(_task(service, job_id))

    @app.post("/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> JobOut:
        """Stop after the current denoising step (or leave the queue); the session keeps
        what it held before the job."""
        task = _task(service, job_id)
        task.job.cancel()
        return job_out(task)


def _in_upload(err: BagelError, staging: Path, name: str) -> BagelError:
    """The error, its paths in the server's staging folder named inside the upload
    (`up.zip/session.json: ...`): the server's own folders are no client's business."""
    return BagelError(str(err).replace(str(staging / "session"), name))


def _task(service: Service, job_id: str):
    task = service.task(job_id)
    if task is None:
        raise NotFound(f"no job {job_id!r}")
    return task


def _queue(service: Service) -> Queue:
    return Queue(busy=service.gate.busy, waiting=service.gate.waiting)

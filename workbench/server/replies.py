"""Answering a task: wait for it and send its outcome, or stream its progress as
server-sent events ending with the same outcome."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import asdict

from fastapi.responses import JSONResponse, Response, StreamingResponse

from workbench.server.schemas import JobOut, TurnOut, TurnResult
from workbench.server.service import CALLER, Outcome, Refused, Task
from workbench.transcript import Turn

POLL_SECONDS = 0.02  # how often a waiting request looks at its task
KEEPALIVE_SECONDS = 10.0  # an SSE comment line, so proxies keep a quiet stream open
DISCONNECT_SECONDS = 0.5  # how often a request whose job is queued checks its client is there


def turn_out(session_id: str, index: int, turn: Turn) -> TurnOut:
    params = None if turn.params is None else asdict(turn.params)
    return TurnOut(
        index=index,
        role=turn.role,
        kind=turn.kind,
        text=turn.text,
        image=None if turn.image is None else f"/sessions/{session_id}/turns/{index}/image",
        params=params,
        seed=turn.seed,
        seconds=round(turn.seconds, 4),
        options=None if turn.options is None else list(turn.options),
        scores=None if turn.scores is None else list(turn.scores),
        forcing=None if turn.forcing is None else asdict(turn.forcing),
    )


def turn_result(task: Task, outcome: Outcome) -> TurnResult:
    entry, done = outcome.entry, outcome.done
    turns = [] if entry is None else entry.turns[outcome.first_turn :]
    return TurnResult(
        job=task.id,
        session=task.session or done.new_session or "",
        turns=[turn_out(entry.id, outcome.first_turn + i, t) for i, t in enumerate(turns)],
        text=done.text,
        scores=done.scores,
        stopped=done.stopped,
        new_session=done.new_session,
        report=done.report,
        queued_seconds=round(task.queued_seconds, 4),
        run_seconds=round(task.run_seconds, 4),
    )


def job_out(task: Task) -> JobOut:
    job, result = task.job, task.result
    return JobOut(
        id=task.id,
        title=task.title,
        session=task.session,
        state=job.state,
        position=job.position,
        steps_done=job.steps_done,
        steps_total=job.steps_total,
        error=result.message if isinstance(result, Refused) else job.error,
        result=turn_result(task, result) if isinstance(result, Outcome) else None,
    )


def outcome(task: Task) -> tuple[int, dict]:
    """The HTTP status and JSON body of a finished task."""
    job, result = task.job, task.result
    if job.state == "cancelled":
        return 409, {"detail": "cancelled: the session is as it was before", "job": task.id}
    if job.state == "failed":  # a bug: its traceback is in the server's log
        return 500, {"detail": f"internal error: {job.error}", "job": task.id}
    if isinstance(result, Refused):
        return result.status, {"detail": result.message, "job": task.id}
    return 200, turn_result(task, result).model_dump(mode="json")


async def finished(task: Task) -> Task:
    """Wait for the task; cancel it if its client goes away before it has started."""
    request, waited = CALLER.get(), 0.0
    while not task.job.finished:
        await asyncio.sleep(POLL_SECONDS)
        waited += POLL_SECONDS
        if waited >= DISCONNECT_SECONDS and task.job.state == "queued" and request is not None:
            waited = 0.0
            if await request.is_disconnected():
                task.job.cancel()  # nobody waits for it: it leaves the line
    return task


async def answer(task: Task, stream: bool) -> Response:
    if stream:
        return StreamingResponse(_events(task), media_type="text/event-stream")
    await finished(task)
    if task.job.state == "done" and isinstance(task.result, Outcome):
        done = task.result.done
        if done.download is not None:
            headers = {"Content-Disposition": f'attachment; filename="{done.filename}"'}
            return Response(done.download, media_type="application/zip", headers=headers)
    status, body = outcome(task)
    return JSONResponse(body, status)


async def _events(task: Task) -> AsyncIterator[str]:
    """`status` events (state, queue position, denoising steps) whenever one changes,
    then one closing event: `result` (the TurnResult), `refused`, `cancelled` or `failed`,
    whose data is the body a plain request would get, with its `status`."""
    try:
        async for event in _progress_events(task):
            yield event
    finally:  # the stream ends; if its client went away before the job started, cancel it
        if task.job.state == "queued":
            task.job.cancel()


async def _progress_events(task: Task) -> AsyncIterator[str]:
    last, quiet = None, 0.0
    while True:
        job = task.job
        now = {
            "job": task.id,
            "state": job.state,
            "position": job.position,
            "steps_done": job.steps_done,
            "steps_total": job.steps_total,
        }
        if now != last:
            yield _event("status", now)
            last, quiet = now, 0.0
        if job.finished:
            break
        await asyncio.sleep(POLL_SECONDS)
        quiet += POLL_SECONDS
        if quiet >= KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            quiet = 0.0
    status, body = outcome(task)
    name = {200: "result", 409: "cancelled", 500: "failed"}.get(status, "refused")
    yield _event(name, {"status": status, **body})


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"

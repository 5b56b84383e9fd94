"""Widgets every page shares: the models, notices, the job panel and the downloads row
(the tab's workspace: tab.py; the sidebar: sidebar.py). Logic lives in workbench.app."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import streamlit as st
import torch

from workbench.app import actions
from workbench.app.branches import Branch
from workbench.app.files import DOWNLOADS
from workbench.app.jobs import Job
from workbench.app.model import AppOptions, LoadedModel, app_options, load_model
from workbench.app.words import for_people

# While a job runs, the run that drew the page stays alive and redraws the job's line
# every TICK_SECONDS (no rerun per tick: a rerun redraws the whole page, and on a small
# machine the browser's redrawing took the CPU the job needed).
TICK_SECONDS = 0.25
FOLLOW_SECONDS = math.inf  # how long one run follows a job (AppTest: 0, `settle` reruns)
# A job that ends this soon is shown by the run that started it: no panel, and
# one full rerun instead of two (the fixed cost per action that short work feels).
QUICK_SECONDS = 1.0
TABLE_ROWS = 12  # a longer table scrolls
DOWNLOAD_LABELS = {
    "frames": "Frames (ZIP)",
    "gif": "GIF",
    "mp4": "MP4",
    "sheet": "Contact sheet",
    "story": "Story page",
    "session": "Session archive",
}


def options() -> AppOptions:
    """Command-line options after `--` (only under `streamlit run streamlit_app.py`)."""
    ours = Path(sys.argv[0]).name == "streamlit_app.py"
    return app_options(sys.argv[1:] if ours else [], os.environ)


# -- models ---------------------------------------------------------------------------

_LOADED: dict[tuple[str, str, str], str | None] = {}  # (spec, device, profile) -> identity


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def cached_model(model: str, device: str, profile: str = "default") -> LoadedModel:
    """One pipeline (and one generation gate) per model, shared by every browser session."""
    torch.set_num_threads(options().threads)  # every thread started later takes this count
    loaded = load_model(model, device, None if profile == "default" else profile)
    _LOADED[(model, device, profile)] = loaded.pipe.identity
    return loaded


def _device_profile() -> tuple[str, str]:
    return st.session_state.get("device", options().device), st.session_state.get(
        "profile", "default"
    )


def model_named(spec: str) -> LoadedModel:
    """The model `spec` on the sidebar's device and profile (loaded if it is not yet)."""
    return cached_model(spec, *_device_profile())


def loaded_models() -> dict[str, str | None]:
    """{spec: checkpoint identity} of the models loaded on the sidebar's device and profile."""
    device, profile = _device_profile()
    return {s: i for (s, d, p), i in _LOADED.items() if (d, p) == (device, profile)}


# -- notices and jobs -----------------------------------------------------------------

# The job each address started last (a reload finds what became of it), process-wide.
_JOBS_BY_ADDRESS: dict[str, Job] = {}


def notify(kind: str, text: str, details: str | None = None) -> None:
    """A message shown once, at the top of the next run; `details` (the precise error
    text) folded under it."""
    st.session_state["notice"] = (kind, text, details)


def show_notice() -> None:
    kind, text, details = st.session_state.pop("notice", (None, None, None))
    if kind is not None:
        getattr(st, kind)(text)
        if details:
            with st.expander("Details"):
                st.code(details, language=None, wrap_lines=True)


def error(what: str, err: BaseException) -> None:
    """Say on the page, in words, that `what` failed (the precise text in a folded box)."""
    message = for_people(what, err)
    st.error(message.text)
    if message.details:
        with st.expander("Details"):
            st.code(message.details, language=None, wrap_lines=True)


def after_reload(address: str) -> None:
    """On a tab's first run at an address: say what became of the job the page at this
    address was running when it was reloaded (a reload ends the page's jobs)."""
    job = _JOBS_BY_ADDRESS.pop(address, None)
    if job is None:
        return
    if not job.finished:
        job.cancel()
        notify(
            "warning",
            f"The page was reloaded while **{job.title}** was running, so it was stopped: "
            "the work is as it was before it. Restore your work below and run it again.",
        )
    elif job.state == "done":
        notify(
            "warning",
            f"**{job.title}** finished just as the page was reloaded, before its result "
            "was kept: the work is as it was before it. Restore your work below and run "
            "it again.",
        )


def busy() -> bool:
    return st.session_state.get("job") is not None


def start_job(
    model: LoadedModel,
    title: str,
    work,
    on_done: Callable[[object], None],
    stay: bool = False,
    at: str = "",
) -> None:
    """Run `work` in the background (after other users' jobs on this model); `on_done`
    gets its result in this run when the job ends within QUICK_SECONDS, else in the run
    after `follow_job` sees it end. Then the page reruns to show it, unless `stay`: a
    quick job that succeeded is drawn by the rest of this run (the caller draws its
    result below the button), one script run per click instead of two. `at`: where the
    page shows the job's panel (`job_panel(at=...)`), by the button clicked."""
    if busy():  # a click that raced the page's redraw: one job per browser session
        notify("info", f"Not started: {title} waits until {st.session_state['job'].title} ends.")
        st.rerun()
    job = Job(title, work, model.gate).start()
    st.session_state["job"] = job
    if "workspace_id" in st.session_state:
        _JOBS_BY_ADDRESS[st.session_state["workspace_id"]] = job
    st.session_state["job_done"] = on_done
    st.session_state["job_at"] = at
    with st.spinner(f"{title[0].upper()}{title[1:]}…"):
        quick = job.wait(QUICK_SECONDS)
    if quick:
        done = job.state == "done"
        finish_job()
        if stay and done:
            return
    st.rerun()


def finish_job() -> None:
    """Apply a finished job's result (or say why there is none)."""
    job: Job | None = st.session_state.get("job")
    if job is None or not job.finished:
        return
    on_done = st.session_state.pop("job_done")
    del st.session_state["job"]
    if _JOBS_BY_ADDRESS.get(st.session_state.get("workspace_id", "")) is job:
        del _JOBS_BY_ADDRESS[st.session_state["workspace_id"]]
    if job.state == "done":
        on_done(job.result)
    elif job.state == "cancelled":
        notify("info", f"Cancelled {job.title}: the session is as it was before.")
    else:
        what = job.title[0].upper() + job.title[1:]
        message = for_people(what, job.exception or job.error or "")
        notify("error", message.text, message.details)


def job_panel(where: st.delta_generator.DeltaGenerator | None = None, at: str | None = None):
    """The running job's panel (in `where`, else here): its line (queue position or
    progress bar) and Cancel. Returns the line's placeholder, which `follow_job` keeps
    current; None when no job runs, or (with `at`) when it was started elsewhere."""
    job: Job | None = st.session_state.get("job")
    if job is None or (at is not None and st.session_state.get("job_at") != at):
        return None
    with where if where is not None else st.container():
        line = st.empty()
        _draw_line(line, job)
        st.button(
            "Cancel",
            key="cancel_job",
            on_click=job.cancel,
            disabled=job.cancel_requested,
            help="Stops after the current denoising step, token or turn; everything stays "
            "as it was.",
        )
    return line


def follow_job(line: st.delta_generator.DeltaGenerator | None) -> None:
    """At the end of a run: redraw the job's line every TICK_SECONDS until the job ends,
    then rerun to show its result. Only the line changes meanwhile; a click (Cancel
    included) interrupts the wait with its own run, which follows the job again."""
    job: Job | None = st.session_state.get("job")
    if job is None or line is None:
        return
    deadline = time.monotonic() + FOLLOW_SECONDS
    while not job.finished:
        if time.monotonic() >= deadline:
            return
        job.wait(TICK_SECONDS)
        _draw_line(line, job)
    st.rerun()


def _draw_line(line: st.delta_generator.DeltaGenerator, job: Job) -> None:
    if job.state == "queued":
        ahead = job.position or 0
        line.info(
            f"Waiting in line: another user is generating on this model "
            f"({ahead} ahead of you). **{job.title}** starts when they are done.",
            icon=":material/hourglass_top:",
        )
    else:
        line.progress(*_progress_line(job))


def _progress_line(job: Job) -> tuple[float, str]:
    """The bar's fill and text: the job, its phase, and its count in the phase's unit."""
    done, total = job.steps_done, job.steps_total
    title = f"{job.title}: {job.phase}" if job.phase else job.title
    if not total:
        return 0.0, f"{title}…"
    return min(done / total, 1.0), f"{title}: {job.unit} {done} of {total}"


# -- shared pieces of pages -----------------------------------------------------------


def downloads_row(model: LoadedModel, branch: Branch, key: str) -> None:
    """Prepare every download of the branch in one job, then offer them."""
    ready = st.session_state.setdefault("downloads", {}).get(branch.name)
    if ready is None or ready[0] != branch.revision:
        if st.button(
            "Prepare downloads (frames ZIP, GIF, MP4, contact sheet, session)",
            key=f"{key}_prepare",
            disabled=busy() or not branch.shots,
        ):

            def on_done(data: dict[str, bytes], name=branch.name, revision=branch.revision):
                st.session_state["downloads"][name] = (revision, data)

            work = actions.downloads(branch)
            start_job(model, f"exporting {branch.name}", work, on_done, at="downloads")
        return
    columns = st.columns(len(DOWNLOADS))
    for column, (what, (file_name, mime)) in zip(columns, DOWNLOADS.items(), strict=True):
        column.download_button(
            DOWNLOAD_LABELS[what],
            ready[1][what],
            file_name=f"{branch.name}-{file_name}",
            mime=mime,
            key=f"{key}_dl_{what}",
            on_click="ignore",
        )


def table(rows: list[dict]) -> None:
    """A static table (a dataframe's canvas grid took the browser ~0.1 s more to draw
    after every action on a 2-core machine); a long one scrolls."""
    st.table(rows, hide_index=True, height="content" if len(rows) <= TABLE_ROWS else 420)


def count(n: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith(("ch", "sh", "s", "x")) else "s")
    return f"{n} {noun if n == 1 else plural}"

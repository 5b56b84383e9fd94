"""Widgets every page shares: the workspace and its autosave, the job panel, notices,
branch pickers and the downloads row (the sidebar: sidebar.py). Logic lives in
workbench.app."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import streamlit as st
from streamlit.runtime import Runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from bagel.errors import BagelError
from workbench.app import actions, autosave
from workbench.app.branches import Branch, Workspace
from workbench.app.files import DOWNLOADS
from workbench.app.jobs import Job
from workbench.app.model import (
    AppOptions,
    LoadedModel,
    app_options,
)

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


# -- workspace, notices, jobs ---------------------------------------------------------


def workspace(model: LoadedModel) -> Workspace:
    """This browser session's branches on the model. The last other model's set is kept
    aside, so going between a page on the world model and one on the default keeps both."""
    ws = st.session_state.get("workspace")
    if ws is None or ws.pipe is not model.pipe:
        other = st.session_state.get("workspace_other")
        st.session_state["workspace_other"] = ws
        ws = other if other is not None and other.pipe is model.pipe else Workspace(model.pipe)
        st.session_state["workspace"] = ws
    return ws


def workspace_id() -> str:
    """The id this tab's branches are autosaved under; kept in the address (?ws=...), so
    that a reload finds them."""
    wid = st.session_state.get("workspace_id")
    if wid is None:
        asked = st.query_params.get("ws", "")
        wid = asked if autosave.is_workspace_id(asked) else autosave.new_workspace_id()
        if not autosave.CLAIMS.claim(wid, _session_id(), _connected):
            wid = autosave.new_workspace_id()
            autosave.CLAIMS.claim(wid, _session_id(), _connected)
            notify(
                "info",
                "This address is open in another tab, which keeps saving there; this tab "
                "saves its work under a new address.",
            )
        st.session_state["workspace_id"] = wid
        # branches saved under this address: until they are restored, this tab saves
        # under a new id (so that new work never overwrites them)
        st.session_state["unclaimed"] = bool(autosave.saved_branches(options().sessions, wid))
    if st.query_params.get("ws") != wid:
        st.query_params["ws"] = wid
    return wid


def _session_id() -> str:
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else ""


def _connected(session: str) -> bool:
    """Whether a browser session is still connected (a closed or reloaded tab is not)."""
    return Runtime.exists() and Runtime.instance().is_active_session(session)


def save_branch(branch: Branch) -> None:
    """Autosave the branch (after every finished turn, undo and fork)."""
    if st.session_state.pop("unclaimed", False):
        st.session_state["workspace_id"] = autosave.new_workspace_id()
    try:
        autosave.save_branch(options().sessions, workspace_id(), branch)
    except (BagelError, OSError) as err:
        st.session_state["notice"] = ("warning", f"Could not autosave {branch.name}: {err}")


def restore_offer(model: LoadedModel) -> None:
    """On a tab without branches: offer the branches saved under this address (a
    reload), or those of the recent workspaces (a new tab, a restarted server)."""
    ws = workspace(model)
    if busy() or any(b.session.turns for b in ws.branches.values()):
        return
    if st.session_state.get("restore_dismissed"):
        return
    root, wid = options().sessions, workspace_id()
    own = autosave.saved_branches(root, wid)
    offers = [(wid, own)] if own else autosave.recent_workspaces(root, exclude=wid, limit=3)
    if not offers:
        return
    with st.container(border=True):
        st.markdown("**Restore your work**")
        for k, (other, branches) in enumerate(offers):
            names = ", ".join(f"{b.name} ({count(b.frames, 'frame')})" for b in branches)
            when = "this address" if other == wid else "a recent visit"
            left, right = st.columns([5, 1])
            left.markdown(f"Autosaved from {when}: {names}")
            if right.button("Restore", key=f"restore_{k}", type="primary"):

                def on_done(outcomes, branches=branches) -> None:
                    st.session_state["unclaimed"] = False  # restored: saving here is ours
                    seeds = {b.name: b.truth_seed for b in branches}
                    for outcome in outcomes:
                        restored = actions.apply(ws, outcome)
                        restored.truth_seed = seeds.get(outcome.branch)
                        save_branch(restored)
                    notify("success", f"Restored {count(len(outcomes), 'branch')}.")

                title = f"restoring {count(len(branches), 'branch')}"
                start_job(model, title, autosave.restore(branches, model.pipe), on_done)
        if st.button("Start fresh", key="restore_dismiss", help="The autosaves stay on disk."):
            st.session_state["restore_dismissed"] = True
            if st.session_state.pop("unclaimed", False):  # keep those; save under a new id
                st.session_state["workspace_id"] = autosave.new_workspace_id()
            st.rerun()


def notify(kind: str, text: str) -> None:
    """A message shown once, at the top of the next run."""
    st.session_state["notice"] = (kind, text)


def show_notice() -> None:
    kind, text = st.session_state.pop("notice", (None, None))
    if kind is not None:
        getattr(st, kind)(text)


def busy() -> bool:
    return st.session_state.get("job") is not None


def start_job(model: LoadedModel, title: str, work, on_done: Callable[[object], None]) -> None:
    """Run `work` in the background (after other users' jobs on this model); `on_done`
    gets its result in this run when the job ends within QUICK_SECONDS, else in the run
    after `follow_job` sees it end."""
    if busy():  # a click that raced the page's redraw: one job per browser session
        notify("info", f"Not started: {title} waits until {st.session_state['job'].title} ends.")
        st.rerun()
    job = Job(title, work, model.gate).start()
    st.session_state["job"] = job
    st.session_state["job_done"] = on_done
    with st.spinner(f"{title[0].upper()}{title[1:]}…"):
        quick = job.wait(QUICK_SECONDS)
    if quick:
        finish_job()
    st.rerun()


def finish_job() -> None:
    """Apply a finished job's result (or say why there is none)."""
    job: Job | None = st.session_state.get("job")
    if job is None or not job.finished:
        return
    on_done = st.session_state.pop("job_done")
    del st.session_state["job"]
    if job.state == "done":
        on_done(job.result)
    elif job.state == "cancelled":
        notify("info", f"Cancelled {job.title}: the session is as it was before.")
    else:
        notify("error", f"{job.title} failed: {job.error}")


def job_panel() -> st.delta_generator.DeltaGenerator | None:
    """The running job's panel: its line (queue position or progress bar) and Cancel.
    Returns the line's placeholder, which `follow_job` keeps current."""
    job: Job | None = st.session_state.get("job")
    if job is None:
        return None
    line = st.empty()
    _draw_line(line, job)
    st.button(
        "Cancel",
        key="cancel_job",
        on_click=job.cancel,
        disabled=job.cancel_requested,
        help="Stops after the current denoising step, token or turn; everything stays as it was.",
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


def branch_picker(ws: Workspace, page: str) -> Branch:
    """Choose the page's current branch. The picker always shows the workspace's
    current branch, so a branch an action just made is the one in view."""
    current = ws.branch(page)
    names = [b.name for b in ws.of_page(page)]
    key = f"{page}_branch"
    if len(names) > 1:
        if st.session_state.get(key) != current.name:
            st.session_state[key] = current.name
        st.selectbox("Branch", names, key=key, on_change=_picked, args=(ws, page, key))
    return ws.branches[ws.current[page]]


def new_branch_button(ws: Workspace, branch: Branch, page: str) -> None:
    """ "New story" / "New world": an empty branch; the others stay (and autosaved)."""
    if branch.session.turns and st.button(
        f"New {page}",
        key=f"{page}_new",
        icon=":material/add:",
        disabled=busy(),
        help=f"Start an empty {page}; the other branches stay in the Branch picker.",
    ):
        fresh = ws.new(page)
        notify("info", f"New {page}: **{fresh.name}**. The earlier branches are in the picker.")
        st.rerun()


def _picked(ws: Workspace, page: str, key: str) -> None:
    ws.current[page] = st.session_state[key]


def apply_outcome(ws: Workspace, outcome: actions.Outcome, done: str) -> None:
    """Adopt a finished job's outcome; say what happened, naming a new branch."""
    new = outcome.branch is None
    branch = actions.apply(ws, outcome)
    if new:
        notify("success", f"{done}: made the branch **{branch.name}**, now shown.")
    save_branch(branch)


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

            start_job(model, f"exporting {branch.name}", actions.downloads(branch), on_done)
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

"""Sessions: save a branch, open a saved session (archive or folder), replay one with its
diff report, download a branch's frames, GIF, MP4, contact sheet and archive."""

from __future__ import annotations

import math
import time
from pathlib import Path

import streamlit as st

from app_pages import common
from bagel.errors import BagelError
from workbench.app import actions, autosave
from workbench.app.files import (
    MAX_ARCHIVE_MB,
    delete_session,
    rename_session,
    save_session,
    saved_sessions,
    unique_folder,
    unpack_session,
)
from workbench.app.model import AppOptions, LoadedModel
from workbench.store.replay_report import ReplayReport


def page(model: LoadedModel, opts: AppOptions) -> None:
    st.header("Sessions")
    ws = common.workspace(model)
    branches = [b for b in ws.branches.values() if b.session.turns]
    save, open_ = st.columns(2)
    with save.container(border=True):
        st.subheader("Save")
        if not branches:
            st.info("Nothing to save yet: make frames on the Story or World page.")
        else:
            branch = _pick_branch(branches, "save_branch")
            # keyed by branch: the name follows the chosen branch
            name = st.text_input("Name", value=branch.name, key=f"save_name_{branch.name}")
            overwrite = st.checkbox("Overwrite a saved session of that name", key="save_overwrite")
            if st.button("Save", key="save", disabled=common.busy()):
                try:
                    folder = save_session(branch.session, opts.sessions, name, overwrite)
                    st.success(f"Saved {branch.name} in {folder}")
                except (BagelError, OSError) as err:
                    st.error(str(err))
    with open_.container(border=True):
        st.subheader("Open")
        _open(model, opts)
    with st.container(border=True):
        st.subheader("Replay")
        _replay(model, opts)
    manage, recent = st.columns(2)
    with manage.container(border=True):
        st.subheader("Rename or delete")
        _manage(opts)
    with recent.container(border=True):
        st.subheader("Autosaved work")
        _autosaved(opts)
    if branches:
        with st.container(border=True):
            st.subheader("Downloads")
            branch = _pick_branch(branches, "download_branch")
            common.downloads_row(model, branch, "sessions")


def _pick_branch(branches, key: str):
    names = [b.name for b in branches]
    name = st.selectbox(
        "Branch",
        names,
        key=key,
        format_func=lambda n: f"{n} ({len(next(b for b in branches if b.name == n).shots)} frames)",
    )
    return next(b for b in branches if b.name == name)


def _saved_folder(opts: AppOptions, key: str) -> Path | None:
    saved = saved_sessions(opts.sessions)
    if not saved:
        st.caption(f"No saved sessions in {opts.sessions} yet.")
        return None
    return st.selectbox(
        f"Saved session (in {opts.sessions})", saved, key=key, format_func=lambda p: p.name
    )


def _open(model: LoadedModel, opts: AppOptions) -> None:
    source = st.radio(
        "From", ("an archive (.zip)", "the saved sessions"), key="open_source", horizontal=True
    )
    folder = None
    if source == "an archive (.zip)":
        # any file: a rejected one gets its reason on Open, not a silent drop by the browser
        upload = st.file_uploader(
            f"Session archive (.zip, up to {MAX_ARCHIVE_MB} MB)", key="open_upload"
        )
    else:
        folder = _saved_folder(opts, "open_folder")
    page = st.radio(
        "Open on the page",
        ("world", "story"),
        key="open_page",
        horizontal=True,
        format_func=str.title,
    )
    other = st.checkbox(
        "Allow another checkpoint",
        key="open_other",
        help="Rebuild a session saved with another model on this one.",
    )
    if not st.button("Open", key="open", disabled=common.busy()):
        return
    if source == "an archive (.zip)":
        if upload is None:
            st.error("Choose a session archive first.")
            return
        try:
            folder = unpack_session(
                upload.name, upload.getvalue(), unique_folder(opts.sessions, Path(upload.name).stem)
            )
        except (BagelError, OSError) as err:
            st.error(str(err))
            return
        unpacked = True
    else:
        unpacked = False
    if folder is None:
        return
    ws = common.workspace(model)

    def on_done(outcome) -> None:
        branch = actions.apply(ws, outcome)
        common.save_branch(branch)
        common.notify(
            "success", f"Opened {folder.name} as **{branch.name}** on the {page.title()} page."
        )

    common.start_job(
        model,
        f"opening {folder.name}",
        actions.open_saved(folder, page, model.pipe, other, discard=unpacked),
        on_done,
    )


def _replay(model: LoadedModel, opts: AppOptions) -> None:
    st.caption("Regenerates every model turn of a saved session with its seeds and compares.")
    folder = _saved_folder(opts, "replay_folder")
    other = st.checkbox("Allow another checkpoint", key="replay_other")
    if folder is not None and st.button("Replay", key="replay", disabled=common.busy()):

        def on_done(report: ReplayReport) -> None:
            st.session_state["replay_report"] = (folder.name, report)

        st.session_state.pop("replay_report", None)  # the last one is not this one's

        common.start_job(
            model,
            f"replaying {folder.name}",
            actions.replay_saved(folder, model.pipe, other),
            on_done,
        )
    shown = st.session_state.get("replay_report")
    if shown is not None:
        _report(*shown)


def _report(name: str, report: ReplayReport) -> None:
    (st.success if report.identical else st.warning)(f"Replay of {name}: {report.verdict()}")
    rows = [
        {
            "frame": f"frame {k} (turn {f.turn})",
            "max |diff| (0-255)": f.max_abs_diff,
            "PSNR (dB)": "identical" if math.isinf(f.psnr) else f"{f.psnr:.2f}",
        }
        for k, f in enumerate(report.frames, 1)
    ]
    if rows:
        common.table(rows)
    texts = [
        {"text": f"reply at turn {turn}", "same text": same} for turn, same in report.texts_equal
    ]
    if texts:
        common.table(texts)


def _manage(opts: AppOptions) -> None:
    folder = _saved_folder(opts, "manage_folder")
    if folder is None:
        return
    new_name = st.text_input("New name", value=folder.name, key=f"rename_{folder.name}")
    left, right = st.columns(2)
    if left.button("Rename", key="rename", disabled=common.busy()):
        try:
            target = rename_session(opts.sessions, folder.name, new_name)
            common.notify("success", f"Renamed {folder.name} to {target.name}.")
            st.rerun()
        except (BagelError, OSError) as err:
            st.error(str(err))
    sure = right.checkbox("Yes, delete it", key=f"delete_sure_{folder.name}")
    if right.button("Delete", key="delete", disabled=common.busy() or not sure):
        try:
            delete_session(opts.sessions, folder.name)
            common.notify("success", f"Deleted the saved session {folder.name}.")
            st.rerun()
        except (BagelError, OSError) as err:
            st.error(str(err))


def _autosaved(opts: AppOptions) -> None:
    """The workspaces autosaved by this app (restore them from a tab without branches)."""
    mine = common.workspace_id()
    others = autosave.recent_workspaces(opts.sessions, exclude=mine, limit=20)
    own = autosave.saved_branches(opts.sessions, mine)
    st.caption(
        "Every branch is saved after each finished turn. A reload of this page restores "
        "this tab's branches; a new tab offers the most recent ones."
    )
    if own:
        st.markdown(f"This tab: {', '.join(b.name for b in own)}")
    for wid, branches in others:
        left, right = st.columns([4, 1])
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(max(b.mtime for b in branches)))
        left.markdown(f"{when}: {', '.join(f'{b.name} ({b.frames})' for b in branches)}")
        if right.button("Delete", key=f"autosave_delete_{wid}", disabled=common.busy()):
            autosave.remove_workspace(opts.sessions, wid)
            common.notify("success", "Deleted those autosaved branches.")
            st.rerun()
    if not own and not others:
        st.caption("Nothing autosaved yet.")

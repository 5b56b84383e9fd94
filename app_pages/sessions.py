"""Sessions: save a branch, open a saved session (archive or folder), replay one with its
diff report, download a branch's frames, GIF, MP4, contact sheet and archive."""

from __future__ import annotations

import math
from pathlib import Path

import streamlit as st

from app_pages import common
from bagel.errors import BagelError
from workbench.app import actions
from workbench.app.files import (
    MAX_ARCHIVE_MB,
    save_session,
    saved_sessions,
    unique_folder,
    unpack_session,
)
from workbench.app.model import AppOptions, LoadedModel
from workbench.store import ReplayReport


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
            name = st.text_input("Name", value=branch.name, key="save_name")
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
        upload = st.file_uploader(
            "Session archive", type=["zip"], key="open_upload", max_upload_size=MAX_ARCHIVE_MB
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
    if folder is None:
        return
    unpacked = source == "an archive (.zip)"  # removed again if it does not open
    ws = common.workspace(model)

    def on_done(outcome) -> None:
        branch = actions.apply(ws, outcome)
        common.notify(
            "success", f"Opened {folder.name} as {branch.name} on the {page.title()} page."
        )

    common.start_job(
        model,
        f"opening {folder.name}",
        actions.open_saved(folder, page, model.pipe, other, unpacked),
        on_done,
    )


def _replay(model: LoadedModel, opts: AppOptions) -> None:
    st.caption("Regenerates every model turn of a saved session with its seeds and compares.")
    folder = _saved_folder(opts, "replay_folder")
    other = st.checkbox("Allow another checkpoint", key="replay_other")
    if folder is not None and st.button("Replay", key="replay", disabled=common.busy()):

        def on_done(report: ReplayReport) -> None:
            st.session_state["replay_report"] = (folder.name, report)

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
    verdict = "identical" if report.identical else "different"
    (st.success if report.identical else st.warning)(
        f"Replay of {name}: {verdict} ({len(report.frames)} frames, "
        f"{len(report.texts_equal)} texts, {report.seconds:.1f} s)"
    )
    rows = [
        {
            "turn": f.turn,
            "max |diff|": f.max_abs_diff,
            "PSNR (dB)": "identical" if math.isinf(f.psnr) else f"{f.psnr:.2f}",
        }
        for f in report.frames
    ]
    if rows:
        st.dataframe(rows, hide_index=True)
    texts = [{"turn": turn, "same text": same} for turn, same in report.texts_equal]
    if texts:
        st.dataframe(texts, hide_index=True)

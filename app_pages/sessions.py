"""Sessions: save a branch, open a saved session (archive or folder), replay one with its
diff report, download a branch's frames, GIF, MP4, contact sheet and archive."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import streamlit as st

from app_pages import common, tab
from bagel.errors import BagelError
from workbench.app import actions, autosave, session_models
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

OTHER = "Rebuild on the model in use"


def page(model: LoadedModel, opts: AppOptions) -> None:
    """The Sessions page (the job's panel is the app's, at the top)."""
    st.header("Sessions")
    ws = tab.workspace()
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
                    common.error(f"Saving {branch.name}", err)
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
            common.downloads_row(tab.model_of(branch, model), branch, "sessions")


def _pick_branch(branches, key: str):
    names = [b.name for b in branches]
    frames = {b.name: common.count(len(b.shots), "frame") for b in branches}
    kinds = {b.name: b.page for b in branches}
    name = st.selectbox(
        "Branch", names, key=key, format_func=lambda n: f"{n} ({kinds[n]}, {frames[n]})"
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
            "Session archive (.zip, e.g. a page's Session archive download)",
            key="open_upload",
            max_upload_size=MAX_ARCHIVE_MB,
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
        OTHER,
        key="open_other",
        help="A session is opened on the model it was made with when the app has that "
        "model; tick this to rebuild one of a model the app cannot find on the model in use.",
    )
    pending = st.session_state.get("open_pending")
    if pending is not None:  # an Open that waits for a large model's load
        _confirm_open(model, *pending)
        return
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
            common.error(f"Opening {upload.name}", err)
            return
        unpacked = True
    else:
        unpacked = False
    if folder is None:
        return
    spec = _model_for(folder, model, other, "Opening")
    if spec is None:
        if unpacked:
            shutil.rmtree(folder, ignore_errors=True)
        return
    if spec not in common.loaded_models() and session_models.is_large(spec):
        st.session_state["open_pending"] = (folder, page, spec, other, unpacked)
        st.rerun()
    _start_open(model, folder, page, spec, other, unpacked)


def _confirm_open(model, folder: Path, page: str, spec: str, other: bool, unpacked: bool) -> None:
    """Ask before a large load: opening `folder` needs the model `spec`."""
    st.warning(
        f"{folder.name} was made with {session_models.describe(spec)}, which is not loaded yet: "
        "loading it takes a while and as much memory as its weights."
    )
    left, right = st.columns(2)
    if left.button("Load it and open", key="open_load", type="primary"):
        del st.session_state["open_pending"]
        _start_open(model, folder, page, spec, other, unpacked)
    if right.button("Not now", key="open_not_now"):
        del st.session_state["open_pending"]
        if unpacked:
            shutil.rmtree(folder, ignore_errors=True)
        st.rerun()


def _model_for(folder: Path, model: LoadedModel, other: bool, what: str) -> str | None:
    """The model to open or replay `folder` on: its own when the app has it, else (with
    OTHER ticked) the page's; None (and a message) when neither."""
    try:
        identity = session_models.saved_identity(folder)
    except BagelError as err:
        common.error(f"{what} {folder.name}", err)
        return None
    spec = tab.resolve(folder, None, identity)
    if spec is not None:
        return spec
    if other:
        return model.spec
    st.error(
        f"{folder.name} was made with a model this app cannot find (not the one it was "
        f"started with, nor the tiny default or the world model). Start the app with that "
        f"model (`workbench app --model …`), or tick **{OTHER}** to rebuild it on "
        f"{session_models.describe(model.spec)} (its frames will differ)."
    )
    return None


def _start_open(
    model: LoadedModel, folder: Path, page: str, spec: str, other: bool, unpacked: bool
) -> None:
    own = common.model_named(spec)  # loaded here when it is not yet (a spinner says so)
    ws = tab.workspace()

    def on_done(outcome) -> None:
        branch = actions.apply(ws, outcome)
        tab.save_branch(branch)
        common.notify(
            "success",
            f"Opened {folder.name} as **{branch.name}** on the {page.title()} page "
            f"({session_models.describe(spec)}): carry on there.",
        )

    common.start_job(
        own,
        f"opening {folder.name}",
        actions.open_saved(folder, page, own.pipe, other, discard=unpacked, model=spec),
        on_done,
    )


def _replay(model: LoadedModel, opts: AppOptions) -> None:
    st.caption("Regenerates every model turn of a saved session with its seeds and compares.")
    folder = _saved_folder(opts, "replay_folder")
    other = st.checkbox(OTHER, key="replay_other")
    if folder is not None and st.button("Replay", key="replay", disabled=common.busy()):
        spec = _model_for(folder, model, other, "Replaying")
        if spec is None:
            return
        own = common.model_named(spec)

        def on_done(report: ReplayReport) -> None:
            st.session_state["replay_report"] = (folder.name, report)

        st.session_state.pop("replay_report", None)  # the last one is not this one's

        common.start_job(
            own,
            f"replaying {folder.name}",
            actions.replay_saved(folder, own.pipe, other),
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
            common.error(f"Renaming {folder.name}", err)
    sure = right.checkbox("Yes, delete it", key=f"delete_sure_{folder.name}")
    if right.button("Delete", key="delete", disabled=common.busy() or not sure):
        try:
            delete_session(opts.sessions, folder.name)
            common.notify("success", f"Deleted the saved session {folder.name}.")
            st.rerun()
        except (BagelError, OSError) as err:
            common.error(f"Deleting {folder.name}", err)


def _autosaved(opts: AppOptions) -> None:
    """The workspaces autosaved by this app (restore them from a tab without branches)."""
    mine = tab.address()
    others = autosave.recent_workspaces(opts.sessions, exclude=mine, limit=20)
    own = autosave.saved_branches(opts.sessions, mine)
    st.caption(
        "Every branch is saved after each finished turn. A reload of this page restores "
        "this tab's branches; a new tab offers the most recent ones."
    )
    if own:
        st.markdown(f"This tab: {tab.by_kind(own)}")
    for wid, branches in others:
        left, right = st.columns([4, 1])
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(max(b.mtime for b in branches)))
        left.markdown(f"{when}: {tab.by_kind(branches)}")
        if right.button("Delete", key=f"autosave_delete_{wid}", disabled=common.busy()):
            autosave.remove_workspace(opts.sessions, wid)
            common.notify("success", "Deleted those autosaved branches.")
            st.rerun()
    if not own and not others:
        st.caption("Nothing autosaved yet.")

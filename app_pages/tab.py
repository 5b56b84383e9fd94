"""What a browser tab holds: its workspace (branches of any page and model), its address
and the autosave under it, restoring saved branches on their own models, and the
branch pickers. Logic lives in workbench.app (autosave, branches, models)."""

from __future__ import annotations

import streamlit as st
from streamlit.runtime import Runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from app_pages import common
from bagel.errors import BagelError
from workbench.app import actions, autosave, session_models
from workbench.app.branches import Branch, Workspace
from workbench.app.model import LoadedModel
from workbench.app.words import for_people

KINDS = {"story": ("story", "stories"), "world": ("world", "worlds")}


def workspace() -> Workspace:
    """This tab's branches, of both pages and any model."""
    ws = st.session_state.get("workspace")
    if ws is None:
        ws = st.session_state["workspace"] = Workspace()
    return ws


def model_of(branch: Branch, page_model: LoadedModel) -> LoadedModel:
    """The model a branch runs on: the page's, or the one it was made or opened with."""
    if branch.session.pipe is page_model.pipe:
        return page_model
    return common.model_named(branch.model)


# -- the address and its claim --------------------------------------------------------


def address() -> str:
    """The id this tab's branches are autosaved under, kept in the page's address
    (?ws=...) so that a reload finds them. Every address is claimed for its tab: a tab
    opened at an address another connected tab holds gets one of its own."""
    wid = st.session_state.get("workspace_id")
    if wid is None:
        root, asked = common.options().sessions, st.query_params.get("ws", "")
        if not autosave.is_workspace_id(asked):
            wid = _new_address()
        elif autosave.CLAIMS.claim(root, asked, tab_id(), _connected):
            wid = asked
            common.after_reload(wid)
            # branches saved here: until they are restored, this tab saves under a new
            # address (so that new work never overwrites them)
            st.session_state["unclaimed"] = bool(autosave.saved_branches(root, wid))
        else:
            wid = _new_address()
            common.notify(
                "info",
                "This address is open in another tab, which keeps saving its work there. "
                "This tab saves under an address of its own; **Restore** below gives it a "
                "copy of that tab's work to carry on from.",
            )
        st.session_state["workspace_id"] = wid
    if st.query_params.get("ws") != wid:
        st.query_params["ws"] = wid
    return wid


def _new_address() -> str:
    """A new address, claimed for this tab (nobody else can hold a fresh one)."""
    wid = autosave.new_workspace_id()
    autosave.CLAIMS.claim(common.options().sessions, wid, tab_id(), _connected)
    st.session_state["workspace_id"] = wid
    st.query_params["ws"] = wid
    return wid


def tab_id() -> str:
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else ""


def _connected(session: str) -> bool:
    """Whether a browser session is still connected (a closed or reloaded tab is not)."""
    return Runtime.exists() and Runtime.instance().is_active_session(session)


def save_branch(branch: Branch) -> None:
    """Autosave the branch (after every finished turn, undo and fork), under this tab's
    address; if another tab took that address over, this tab moves to a new one with
    all its branches."""
    root = common.options().sessions
    if st.session_state.pop("unclaimed", False):
        _new_address()
    try:
        if autosave.CLAIMS.save(root, address(), tab_id(), branch):
            return
        wid = _new_address()
        for other in workspace().branches.values():
            autosave.CLAIMS.save(root, wid, tab_id(), other)
        common.notify(
            "warning",
            "Another tab took over this tab's address, so this tab now saves its work "
            "under a new address (all its branches are saved there).",
        )
    except (BagelError, OSError) as err:
        message = for_people(f"Autosaving {branch.name}", err)
        common.notify("warning", message.text, message.details)


def apply_outcome(ws: Workspace, outcome: actions.Outcome, done: str) -> None:
    """Adopt a finished job's outcome; say what happened, naming a new branch."""
    new = outcome.branch is None
    branch = actions.apply(ws, outcome)
    if new:
        common.notify("success", f"{done}: made the branch **{branch.name}**, now shown.")
    save_branch(branch)


# -- restoring ------------------------------------------------------------------------


def restore_offer(model: LoadedModel) -> None:
    """On a tab without branches: offer the branches saved under this address (a
    reload), or those of the recent workspaces (a new tab, a restarted server), of
    both pages, each restored on its own model."""
    ws = workspace()
    if common.busy() or any(b.session.turns for b in ws.branches.values()):
        return
    if st.session_state.get("restore_dismissed"):
        return
    root, wid = common.options().sessions, address()
    own = autosave.saved_branches(root, wid)
    offers = [(wid, own)] if own else autosave.recent_workspaces(root, exclude=wid, limit=3)
    if not offers:
        return
    with st.container(border=True):
        st.markdown("**Restore your work**")
        for k, (other, branches) in enumerate(offers):
            when = "this address" if other == wid else "a recent visit"
            left, right = st.columns([5, 1])
            left.markdown(f"Autosaved from {when}: {by_kind(branches)}")
            large = _large_loads(branches)
            if large:
                left.caption(
                    f"Restoring loads {', '.join(large)} first, which takes a while and "
                    "that much memory."
                )
            label = "Load and restore" if large else "Restore"
            if right.button(label, key=f"restore_{k}", type="primary"):
                restore(model, branches)
        if st.button("Start fresh", key="restore_dismiss", help="The autosaves stay on disk."):
            st.session_state["restore_dismissed"] = True
            if st.session_state.pop("unclaimed", False):  # keep those; save under a new id
                _new_address()
            st.rerun()


def by_kind(branches: list[autosave.SavedBranch]) -> str:
    """ "2 stories (story-1: 2 frames, story-2: 1 frame) and 1 world (world-1: 5 frames)"."""
    parts = []
    for page, (one, many) in KINDS.items():
        mine = [b for b in branches if b.page == page]
        if mine:
            names = ", ".join(f"{b.name}: {common.count(b.frames, 'frame')}" for b in mine)
            parts.append(f"{len(mine)} {one if len(mine) == 1 else many} ({names})")
    return " and ".join(parts)


def _large_loads(branches: list[autosave.SavedBranch]) -> list[str]:
    """The recorded models of `branches` that are not loaded and are large to load."""
    specs = {b.model for b in branches if b.model is not None}
    loaded = common.loaded_models()
    return [
        f"{session_models.describe(s)} ({_size(s)})"
        for s in sorted(specs)
        if s not in loaded and session_models.is_large(s)
    ]


def _size(spec: str) -> str:
    size = session_models.load_bytes(spec)
    return "size unknown: it may be downloaded" if size is None else f"{size / 2**30:.1f} GB"


def restore(model: LoadedModel, branches: list[autosave.SavedBranch]) -> None:
    """Restore `branches`, each on its own model (loaded here when needed); branches of
    a model this app cannot find stay on disk, and the notice says so."""
    plan, missing = [], []
    for branch in branches:
        spec = resolve(branch.folder, branch.model, branch.identity)
        if spec is None:
            missing.append(branch.name)
        else:
            plan.append((branch, spec, common.model_named(spec).pipe))
    if not plan:
        common.notify("warning", _missing_text(missing))
        st.rerun()
    ws = workspace()

    def on_done(outcomes) -> None:
        st.session_state["unclaimed"] = False  # restored: saving here is ours
        seeds = {b.name: b.truth_seed for b in branches}
        for outcome in outcomes:
            restored = actions.apply(ws, outcome)
            restored.truth_seed = seeds.get(outcome.branch)
            save_branch(restored)
        pages = sorted({o.page for o in outcomes}, key=list(KINDS).index)
        where = " and ".join(f"the {p.title()} page" for p in pages)
        text = f"Restored {common.count(len(outcomes), 'branch')}, on {where}."
        common.notify("success", text + (f" {_missing_text(missing)}" if missing else ""))

    title = f"restoring {common.count(len(plan), 'branch')}"
    common.start_job(model, title, autosave.restore(plan), on_done)


def _missing_text(names: list[str]) -> str:
    return (
        f"Not restored: {', '.join(names)}, made with a model this app cannot find. "
        "They stay on disk; start the app with that model (`workbench app --model …`) "
        "to restore them."
    )


def resolve(folder, recorded: str | None, identity: str | None = None) -> str | None:
    """The model spec a saved session runs on (see workbench.app.session_models); None when
    this app has no model of its identity."""
    if identity is None:
        try:
            identity = session_models.saved_identity(folder)
        except BagelError:
            identity = None
    loaded = common.loaded_models()
    return session_models.model_for(
        identity, recorded, session_models.known_models(common.options().model), loaded
    )


# -- pickers --------------------------------------------------------------------------


def branch_picker(ws: Workspace, page: str, model: LoadedModel) -> Branch:
    """Choose the page's current branch (of any model: each runs on its own). The picker
    always shows the workspace's current branch, so a branch an action just made is the
    one in view."""
    current = ws.branch(page, model.pipe, model.spec)
    names = [b.name for b in ws.of_page(page)]
    key = f"{page}_branch"
    if len(names) > 1:
        if st.session_state.get(key) != current.name:
            st.session_state[key] = current.name
        st.selectbox("Branch", names, key=key, on_change=_picked, args=(ws, page, key))
    return ws.branches[ws.current[page]]


def _picked(ws: Workspace, page: str, key: str) -> None:
    ws.current[page] = st.session_state[key]


def new_branch_button(ws: Workspace, branch: Branch, page: str, model: LoadedModel) -> None:
    """ "New story" / "New world": an empty branch; the others stay (and autosaved)."""
    if branch.session.turns and st.button(
        f"New {page}",
        key=f"{page}_new",
        icon=":material/add:",
        disabled=common.busy(),
        help=f"Start an empty {page}; the other branches stay in the Branch picker.",
    ):
        fresh = ws.new(page, model.pipe, model.spec)
        common.notify(
            "info", f"New {page}: **{fresh.name}**. The earlier branches are in the picker."
        )
        st.rerun()

"""Story: beats (text and an optional reference image) become a strip of frames;
regenerate a beat as a branch, compare branches, edit the last frame with thinking."""

from __future__ import annotations

import math

import streamlit as st
from PIL import Image

from app_pages import common, tab
from bagel.errors import BagelError
from workbench import chains
from workbench.app import actions
from workbench.app.branches import Branch, Workspace
from workbench.app.files import IMAGE_TYPES, MAX_IMAGE_MB, read_image
from workbench.app.model import LoadedModel
from workbench.metrics import psnr, ssim
from workbench.params import GenerationParams

COLUMNS = 4


def page(model: LoadedModel, params: GenerationParams | None):
    """The Story page; returns the job's line, drawn by the button that started the job
    (under Generate, under the Regenerate / Edit row, or under the downloads)."""
    st.header("Story")
    ws = tab.workspace()
    branch = tab.branch_picker(ws, "story", model)
    tab.new_branch_button(ws, branch, "story", model)
    model = tab.model_of(branch, model)  # a branch runs on its own model
    _new_beats(model, ws, branch, params)
    line = common.job_panel(at="beats")
    _strip(branch)
    if branch.shots:
        regenerate, edit, history = st.columns(3)
        with regenerate.container(border=True):
            _regenerate(model, ws, branch, params)
        with edit.container(border=True):
            _edit(model, ws, branch, params)
        with history.container(border=True):
            _history(ws, branch)
        line = line or common.job_panel(at="actions")
    if len(ws.of_page("story")) > 1:
        _compare(ws)
    if branch.shots:
        st.subheader("Downloads")
        common.downloads_row(model, branch, "story")
        line = line or common.job_panel(at="downloads")
    return line


def _run(model: LoadedModel, ws: Workspace, title: str, work, at: str) -> None:
    """Start `work`; its panel shows `at` the beats' form or the actions' row."""
    done = title[0].upper() + title[1:]
    common.start_job(
        model, title, work, lambda outcome: tab.apply_outcome(ws, outcome, done), at=at
    )


def _new_beats(model: LoadedModel, ws: Workspace, branch: Branch, params) -> None:
    pending: list[chains.Beat] = st.session_state.setdefault("story_pending", [])
    resets = st.session_state.setdefault("beat_resets", 0)  # a new uploader after each beat
    with st.form("beat_form"):
        st.markdown("**Add a beat**")
        st.text_area("Beat text", key="beat_text", placeholder="A fox finds a lantern…")
        st.file_uploader(
            f"Reference image (optional: {', '.join(IMAGE_TYPES)})",
            key=f"beat_image_{resets}",
            max_upload_size=MAX_IMAGE_MB,
        )
        error = st.session_state.pop("beat_error", None)
        if error:
            st.error(error)
        st.form_submit_button("Add beat", on_click=_add_beat, args=(model, pending, resets))
    for i, beat in enumerate(pending):
        left, right = st.columns([6, 1])
        left.markdown(
            f"{len(branch.steps) + i + 1}. {beat.text}"
            + (" *(with reference)*" if beat.image else "")
        )
        if right.button("Remove", key=f"pending_remove_{i}"):
            pending.pop(i)
            st.rerun()
    caption = st.checkbox("Caption each frame (the model describes it)", key="story_caption")
    label = f"Generate {len(pending)} beat{'s' * (len(pending) != 1)}"
    if st.button(
        label,
        key="story_generate",
        type="primary",
        disabled=common.busy() or not pending or params is None,
    ):
        beats = list(pending)
        pending.clear()
        _run(model, ws, label.lower(), actions.story(branch, beats, params, caption), "beats")


def _add_beat(model: LoadedModel, pending: list, resets: int) -> None:
    """The form's callback: add the beat, or keep what was typed and say why not.

    The uploader takes any file, so that a rejected one gets its reason here instead of
    being dropped by the browser."""
    text = st.session_state.get("beat_text", "")
    upload = st.session_state.get(f"beat_image_{resets}")
    if not text.strip():
        st.session_state["beat_error"] = "Not added: a beat needs some text."
        return
    image = None
    if upload is not None:
        try:
            image = read_image(upload.name, upload.getvalue(), model.pipe)
        except BagelError as err:
            st.session_state["beat_error"] = f"Not added: the reference image {err}"
            return
    pending.append(chains.Beat(text.strip(), image))
    st.session_state["beat_text"] = ""
    st.session_state["beat_resets"] = resets + 1


def _strip(branch: Branch) -> None:
    shots = branch.shots
    if not shots:
        st.info("No frames yet: add beats, then generate them.")
        return
    st.subheader(f"Strip of {branch.name}")
    st.caption(common.count(len(shots), "frame"))
    for row in range(0, len(shots), COLUMNS):
        columns = st.columns(COLUMNS)
        for column, index in zip(columns, range(row, min(row + COLUMNS, len(shots))), strict=False):
            shot = shots[index]
            step = next(s for s in branch.steps if shot in s.shots)
            column.image(
                shot.image, caption=f"{index + 1}. {step.text or shot.label}", width="stretch"
            )
            if shot.caption:
                column.caption(f"Model's caption: {shot.caption}")
    for index, shot in enumerate(shots):  # full width, folded: thoughts can be long
        if shot.thought:
            with st.expander(f"Thought before frame {index + 1}"):
                st.markdown(shot.thought)


def _regenerate(model, ws: Workspace, branch: Branch, params) -> None:
    st.markdown("**Regenerate a beat as a new branch**")
    count = len(branch.steps)
    beat = st.number_input("Beat", 1, count, count, key="regen_beat")
    shots = branch.steps[beat - 1].shots
    used = branch.session.turns[shots[0].turn].seed if shots else None
    if used is not None:
        st.caption(f"Beat {beat} was made with seed {used}.")
    seed = st.number_input(
        "Seed for the new branch",
        0,
        2**31 - 1,
        (used if used is not None else params.seed if params else 0) + 1,
        key=f"regen_seed_{branch.name}_{beat}",
    )
    if st.button("Regenerate", key="regenerate", disabled=common.busy() or params is None):
        new = GenerationParams(**{**vars(params), "seed": int(seed)})
        caption = any(s.caption for s in branch.shots)
        work = actions.regenerate(branch, int(beat) - 1, new, caption)
        _run(model, ws, f"regenerating beat {beat}", work, "actions")


def _edit(model, ws: Workspace, branch: Branch, params) -> None:
    st.markdown("**Edit the last frame**")
    instruction = st.text_input("Instruction", key="edit_instruction", placeholder="make it night")
    think = st.checkbox("Think first (shows the thought)", value=True, key="edit_think")
    if st.button("Edit", key="edit", disabled=common.busy() or params is None):
        if not instruction.strip():
            st.error("Write an instruction first.")
            return
        work = actions.edit(branch, instruction.strip(), params, think)
        _run(model, ws, "editing", work, "actions")


def _history(ws: Workspace, branch: Branch) -> None:
    st.markdown("**History**")
    if st.button(
        "Undo last beat", key="story_undo", icon=":material/undo:", disabled=common.busy()
    ):
        branch.undo()
        tab.save_branch(branch)
        st.rerun()
    if st.button(
        "Fork this story", key="story_fork", icon=":material/call_split:", disabled=common.busy()
    ):
        fork = ws.fork(branch)
        tab.save_branch(fork)
        common.notify("success", f"Forked {branch.name} as **{fork.name}**, now shown.")
        st.rerun()


def _compare(ws: Workspace) -> None:
    st.subheader("Compare branches")
    names = [b.name for b in ws.of_page("story")]
    # A new branch becomes B (the newest is the one to compare); a gone one is replaced
    if st.session_state.get("compare_names") != names:
        st.session_state["compare_names"] = names
        st.session_state["compare_b"] = names[-1]
        if st.session_state.get("compare_a") not in names:
            st.session_state["compare_a"] = names[0]
    left, right = st.columns(2)
    a = left.selectbox("Branch A", names, key="compare_a")
    b = right.selectbox("Branch B", names, key="compare_b")
    shots_a, shots_b = ws.branches[a].shots, ws.branches[b].shots
    for i in range(max(len(shots_a), len(shots_b))):
        left, middle, right, _ = st.columns([2, 1, 2, 3])
        if i < len(shots_a):
            left.image(shots_a[i].image, caption=f"{a}: {i + 1}", width="stretch")
        if i < len(shots_b):
            right.image(shots_b[i].image, caption=f"{b}: {i + 1}", width="stretch")
        if i < len(shots_a) and i < len(shots_b):
            value, note = _difference(shots_a[i].image, shots_b[i].image)
            middle.markdown(f"**Frame {i + 1}**  \n{value}  \n{note}")


def _difference(a: Image.Image, b: Image.Image) -> tuple[str, str]:
    """PSNR and SSIM of two frames, as text."""
    p = psnr(a, b)
    try:
        note = f"SSIM {ssim(a, b):.3f}"
    except BagelError:  # smaller than the SSIM window
        note = "SSIM: too small"
    return ("identical" if math.isinf(p) else f"PSNR {p:.1f} dB"), note

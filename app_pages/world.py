"""World: start from an image or a prompt, move the camera, rotate, predict frames.

On a world model (workbench/world/model.py) a world can also start from a seeded view of
the rendered world; its frames are then shown beside the renderer's true frames, with
eval-world's PSNR / SSIM of each against its truth."""

from __future__ import annotations

import math

import streamlit as st

from app_pages import common, tab
from bagel.errors import BagelError, InputError
from workbench import chains
from workbench.app import actions
from workbench.app.branches import Branch
from workbench.app.files import IMAGE_TYPES, MAX_IMAGE_MB, read_image
from workbench.app.model import LoadedModel
from workbench.app.world_truth import start_view, truth_scores
from workbench.chains.actions import parse_path
from workbench.params import GenerationParams
from workbench.world.eval import PSNR_CAP, world_params

MOVES = {  # action -> (button label, Material icon)
    "forward": ("Forward", "arrow_upward"),
    "back": ("Back", "arrow_downward"),
    "turn_left": ("Turn left", "turn_left"),
    "turn_right": ("Turn right", "turn_right"),
    "look_up": ("Look up", "keyboard_double_arrow_up"),
    "look_down": ("Look down", "keyboard_double_arrow_down"),
    "strafe_left": ("Strafe left", "arrow_back"),
    "strafe_right": ("Strafe right", "arrow_forward"),
}
assert tuple(MOVES) == chains.ACTIONS
COLUMNS = 4


def page(model: LoadedModel, params: GenerationParams | None):
    """The World page; returns the job's line, drawn right under the buttons that start
    jobs (so it is in view where the user clicked)."""
    st.header("World")
    ws = tab.workspace()
    branch = tab.branch_picker(ws, "world", model)
    tab.new_branch_button(ws, branch, "world", model)
    model = tab.model_of(branch, model)  # a branch runs on its own model
    if model.world and params is not None:
        # sampled as it was trained (and as eval-world samples): the knobs' seed only
        params = world_params(seed=params.seed)
        st.caption(
            "The world model samples with its own settings: 64 × 64, "
            f"{params.num_timesteps} steps, no guidance; the sidebar's seed applies."
        )
    if not branch.shots:
        _start(model, branch, params)
        return common.job_panel()
    # While a job runs, the page's run follows it, and only a whole-page click (Cancel)
    # interrupts that run: a click in a fragment would wait for the job's end.
    return (_world if common.busy() else _world_fragment)(model, branch, params)


def _world(model: LoadedModel, branch: Branch, params: GenerationParams | None):
    """The controls, the job's line (right under them), the timeline and the downloads."""
    _controls(model, branch, params)
    line = common.job_panel()
    _timeline(branch, _truth_seed(model, branch))
    st.subheader("Downloads")
    common.downloads_row(model, branch, "world")
    return line


# No job running: a click here reruns this part of the page only (not the sidebar and
# the header), and a quick move is drawn by the click's own run (docs/benchmarks.md).
_world_fragment = st.fragment(_world)


def _run(model: LoadedModel, title: str, work, stay: bool = True) -> None:
    """Start `work` on the branch; a quick one is drawn by this run (below the button)."""
    ws = tab.workspace()
    done = title[0].upper() + title[1:]
    common.start_job(
        model, title, work, lambda outcome: tab.apply_outcome(ws, outcome, done), stay=stay
    )


def _truth_seed(model: LoadedModel, branch: Branch) -> int | None:
    """The seed of the rendered view the branch started from (world models only)."""
    return branch.truth_seed if model.world else None


def _start(model: LoadedModel, branch: Branch, params: GenerationParams | None) -> None:
    if model.world:
        st.write("Start a world from a view of the rendered world, a prompt or an image.")
        tabs = st.tabs(["From the rendered world", "From a prompt", "From an image"])
        with tabs[0]:
            seed = int(st.number_input("World seed", 0, 2**31 - 1, 0, key="world_seed"))
            st.image(start_view(seed), caption=f"the rendered view of seed {seed}", width=256)
            if st.button("Start from this view", key="world_start_view", disabled=common.busy()):
                branch.truth_seed = seed
                work = actions.start_from_image(branch, start_view(seed), seed)
                _run(model, "start view", work, stay=False)
        from_prompt, from_image = tabs[1:]
    else:
        st.write("Start a world from a prompt or from an image of your own.")
        from_prompt, from_image = st.tabs(["From a prompt", "From an image"])
    with from_prompt:
        prompt = st.text_input("Prompt", key="world_prompt", placeholder="a quiet street at dawn")
        if st.button("Start from prompt", key="world_start_prompt", disabled=common.busy()):
            if not prompt.strip():
                st.error("Write a prompt first.")
            elif params is not None:
                branch.truth_seed = None
                work = actions.start_from_prompt(branch, prompt, params)
                _run(model, "first frame", work, stay=False)
    with from_image:
        # any file: a rejected one gets its reason here, not a silent drop by the browser
        upload = st.file_uploader(
            f"Start image ({', '.join(IMAGE_TYPES)})",
            key="world_upload",
            max_upload_size=MAX_IMAGE_MB,
        )
        if st.button("Start from image", key="world_start_image", disabled=common.busy()):
            if upload is None:
                st.error("Choose an image first.")
                return
            try:
                image = read_image(upload.name, upload.getvalue(), model.pipe)
            except BagelError as err:
                st.error(str(err))
                return
            seed = params.seed if params is not None else 0
            branch.truth_seed = None
            _run(model, "start image", actions.start_from_image(branch, image, seed), stay=False)


def _controls(model: LoadedModel, branch: Branch, params: GenerationParams | None) -> None:
    off = common.busy() or params is None
    st.subheader("Move")
    columns = st.columns(COLUMNS)
    for i, (action, (label, icon)) in enumerate(MOVES.items()):
        column = columns[i % COLUMNS]
        if column.button(
            label, key=f"move_{action}", icon=f":material/{icon}:", disabled=off, width="stretch"
        ):
            _run(model, label.lower(), actions.navigate(branch, [action], params))
    _path(model, branch, params, off)
    rotate, predict, history = st.columns(3)
    with rotate.container(border=True):
        st.markdown("**Rotate**")
        degrees = st.number_input("Degrees per step", -180.0, 180.0, 30.0, 15.0, key="rot_deg")
        steps = st.number_input("Steps", 1, 36, 1, key="rot_steps")
        axis = st.selectbox("Axis", chains.AXES, key="rot_axis")
        if st.button("Rotate", key="rotate", disabled=off):
            work = actions.rotate(branch, float(degrees), int(steps), axis, params)
            _run(model, f"rotate {degrees:g}° × {steps}", work)
    with predict.container(border=True):
        st.markdown("**Predict future frames**")
        frames = st.number_input("Frames", 1, 32, 2, key="pred_frames")
        mode = st.radio(
            "Mode",
            chains.PREDICT_MODES,
            key="pred_mode",
            horizontal=True,
            format_func={"autoregressive": "autoregressive", "forcing": "diffusion forcing"}.get,
        )
        window, schedule = 1, "autoregressive"
        if mode == "forcing":
            window = st.number_input(
                "Window (frames denoised together)", 1, 8, 2, key="pred_window"
            )
            schedule = st.selectbox("Noise schedule", chains.SCHEDULES, index=1, key="pred_sched")
        if st.button("Predict", key="predict", disabled=off):
            work = actions.predict(branch, int(frames), params, mode, int(window), schedule)
            _run(model, f"predict {frames} frames", work)
    with history.container(border=True):
        st.markdown("**History**")
        if st.button(
            "Undo last frame", key="world_undo", icon=":material/undo:", disabled=common.busy()
        ):
            step = branch.undo()
            tab.save_branch(branch)
            common.notify("info", f"Undid {step.shots[0].label if step.shots else 'a step'}.")
            st.rerun()
        if st.button(
            "Fork this world",
            key="world_fork",
            icon=":material/call_split:",
            disabled=common.busy(),
        ):
            fork = tab.workspace().fork(branch)
            tab.save_branch(fork)
            common.notify("success", f"Forked {branch.name} as **{fork.name}**, now shown.")
            st.rerun()
        memory = branch.session.memory()
        st.caption(
            f"{memory.main_tokens} tokens in context, {memory.allocated_bytes / 2**20:.1f} MiB"
        )


def _path(model: LoadedModel, branch: Branch, params: GenerationParams | None, off: bool) -> None:
    """Several moves typed in one line, run as one job."""
    with st.form("world_path", border=False, enter_to_submit=True):
        text, go = st.columns([3, 1], vertical_alignment="bottom")
        typed = text.text_input(
            "Path (moves in order, separated by commas)",
            key="world_path_text",
            placeholder="forward x2, turn left, forward",
        )
        if go.form_submit_button(
            "Walk the path", key="world_path_go", disabled=off, width="stretch"
        ):
            try:
                moves = parse_path(typed)
            except InputError as err:
                st.error(str(err))  # what was typed stays in the field
                return
            _run(model, f"walk {len(moves)} moves", actions.navigate(branch, moves, params))


def _timeline(branch: Branch, truth_seed: int | None = None) -> None:
    shots = branch.shots
    st.subheader(f"Timeline of {branch.name}")
    st.caption(common.count(len(shots), "frame"))
    truth, scores = [None] * len(shots), []
    if truth_seed is not None:
        truth, scores = _truth(branch, truth_seed)
        st.caption(f"Each frame above the renderer's true frame (world seed {truth_seed}).")
    for row in range(0, len(shots), COLUMNS):
        columns = st.columns(COLUMNS)
        for column, index in zip(columns, range(row, min(row + COLUMNS, len(shots))), strict=False):
            shot = shots[index]
            column.image(shot.image, caption=f"{index + 1}. {shot.label}", width="stretch")
            if truth[index] is not None:
                column.image(truth[index], caption=f"{index + 1}. true frame", width="stretch")
    if scores:
        st.markdown(
            "**Against the truth** (the model's frame vs the renderer's; PSNR capped at "
            f"{PSNR_CAP:g} dB, as `workbench eval-world` computes it)"
        )
        common.table(
            [
                {
                    "frame": s.index + 1,
                    "label": s.label,
                    "PSNR vs truth (dB)": round(s.psnr, 3),
                    "SSIM vs truth": round(s.ssim, 4),
                }
                for s in scores
            ]
        )
        if len(scores) < len(shots):
            st.caption("No truth after a rotation: the rendered room has no turntable.")
    if branch.metrics:
        st.markdown("**Consistency** (to the previous frame; drift: similarity to the first)")
        common.table(
            [
                {
                    "frame": m.index + 1,
                    "label": shot.label,
                    "PSNR (dB)": _number(m.psnr_prev),
                    "SSIM": _number(m.ssim_prev),
                    "drift (cos)": _number(m.drift),
                }
                for m, shot in zip(branch.metrics, shots, strict=False)
            ]
        )


def _truth(branch: Branch, seed: int):
    """The branch's true frames and scores, computed once per change of the branch (the
    renderer replays every move from the start: 0.24 s for 25 frames)."""
    cache = st.session_state.setdefault("world_truth", {})
    key = (id(branch), branch.revision, seed, len(branch.shots))
    if cache.get(branch.name, (None,))[0] != key:
        labels, images = [s.label for s in branch.shots], [s.image for s in branch.shots]
        cache[branch.name] = (key, truth_scores(seed, labels, images))
    return cache[branch.name][1]


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return "identical" if math.isinf(value) else f"{value:.3f}"

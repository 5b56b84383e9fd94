"""The sidebar: which model runs (loaded once per process and shared) and the
generation knobs."""

from __future__ import annotations

import streamlit as st

from app_pages.common import cached_model
from bagel.errors import BagelError
from bagel.taylorseer import FEATURE_CACHES
from workbench.app.model import (
    DEVICES,
    PROFILE_CHOICES,
    RANDOM_WEIGHTS_BANNER,
    AppOptions,
    LoadedModel,
    model_for_page,
)
from workbench.params import GenerationParams


def sidebar_model(opts: AppOptions, page: str = "") -> LoadedModel | None:
    with st.sidebar.expander("Model", expanded=False):
        spec = st.text_input(
            "Checkpoint folder or hub id",
            value=opts.model,
            key="model_spec",
            placeholder="empty: the tiny default",
            help="A BAGEL-7B-MoT folder, or a hub id when online. Empty: the tiny default.",
        )
        device = st.selectbox("Device", DEVICES, index=DEVICES.index(opts.device), key="device")
        profile = st.selectbox(
            "Memory profile",
            PROFILE_CHOICES,
            key="profile",
            help="How the weights are held: int8 / nf4 quantise the decoder, offload streams "
            "layers from CPU memory (docs/profiles.md). default: fp32 on CPU, bf16 on CUDA.",
        )
    chosen = model_for_page(spec, page)
    try:
        model = cached_model(chosen, device, profile)
    except (BagelError, OSError) as err:
        st.error(
            f"Cannot load the model {chosen or '(tiny default)'}: {err}. Choose another "
            "folder or hub id in the sidebar's Model box."
        )
        return None
    st.sidebar.caption(f"Model: `{model.name}` on {model.pipe.device.type}")
    st.sidebar.caption(model.summary)
    if model.random_weights:
        st.warning(RANDOM_WEIGHTS_BANNER, icon=":material/warning:")
    if model.gate.busy and st.session_state.get("job") is None:
        st.sidebar.info(
            f"Another user is generating on this model ({model.gate.waiting} waiting): "
            "a new generation waits its turn."
        )
    return model


def _knob_defaults(params: GenerationParams) -> dict[str, object]:
    return {
        "knob_steps": params.num_timesteps,
        "knob_shift": params.timestep_shift,
        "knob_cfg_text": params.cfg_text_scale,
        "knob_cfg_img": params.cfg_img_scale,
        "knob_interval": tuple(params.cfg_interval),
        "knob_renorm": params.cfg_renorm_type,
        "knob_feature_cache": params.feature_cache,
        "knob_seed": params.seed,
        "knob_think_tokens": params.max_think_tokens,
    }


def _reset_knobs(params: GenerationParams) -> None:
    st.session_state.update(_knob_defaults(params))


def sidebar_knobs(max_side: int) -> GenerationParams | None:
    """The generation knobs (defaults: the official text-to-image values)."""
    for key, value in _knob_defaults(GenerationParams()).items():
        st.session_state.setdefault(key, value)
    bar = st.sidebar
    bar.subheader("Generation")
    left, right = bar.columns(2)
    left.button("T2I defaults", key="knob_t2i", on_click=_reset_knobs, args=(GenerationParams(),))
    right.button(
        "Edit defaults", key="knob_edit", on_click=_reset_knobs, args=(GenerationParams.edit(),)
    )
    steps = bar.number_input("Denoising steps", 2, 250, key="knob_steps")
    cfg_text = bar.number_input(
        "Text guidance (cfg_text_scale)", 0.0, 20.0, step=0.5, key="knob_cfg_text"
    )
    cfg_img = bar.number_input(
        "Image guidance (cfg_img_scale)", 0.0, 20.0, step=0.25, key="knob_cfg_img"
    )
    interval = bar.slider("Guidance interval (t)", 0.0, 1.0, step=0.05, key="knob_interval")
    shift = bar.number_input("Timestep shift", 0.1, 20.0, step=0.5, key="knob_shift")
    renorm = bar.selectbox("Renorm", ("global", "channel", "text_channel"), key="knob_renorm")
    feature_cache = bar.selectbox(
        "Feature cache",
        FEATURE_CACHES,
        key="knob_feature_cache",
        help="taylorseer: the official TaylorSeer cache; after step 4 the decoder runs "
        "every third step and is extrapolated between (faster, slightly different image).",
    )
    seed = bar.number_input("Seed", 0, 2**31 - 1, key="knob_seed")
    think = bar.number_input("Max thinking tokens", 1, 4096, key="knob_think_tokens")
    auto = bar.checkbox(
        "Automatic size",
        value=True,
        key="knob_auto_size",
        help="The last image's size; for a first image the largest square up to 1024.",
    )
    height = width = None
    if not auto:
        side = min(512, max_side)
        height = int(bar.number_input("Height", 16, max_side, side, step=16, key="knob_height"))
        width = int(bar.number_input("Width", 16, max_side, side, step=16, key="knob_width"))
    try:
        return GenerationParams(
            num_timesteps=int(steps),
            timestep_shift=float(shift),
            cfg_text_scale=float(cfg_text),
            cfg_img_scale=float(cfg_img),
            cfg_interval=tuple(interval),
            cfg_renorm_type=renorm,
            feature_cache=feature_cache,
            seed=int(seed),
            max_think_tokens=int(think),
            height=height,
            width=width,
        )
    except BagelError as err:
        bar.error(str(err))
        return None

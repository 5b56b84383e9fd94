"""Diffusion forcing on the tiny checkpoint: window 1 == the single-image sampler, the
block-causal frame mask, the per-frame schedules, commits, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bagel.contexts import prefill, wrap_image
from bagel.embeddings import patchify_latent, unpatchify_latent
from bagel.errors import InputError
from bagel.flow import SamplerParams, cfg_combine, cfg_scales, euler_step, flow_timesteps
from bagel.forcing import forcing_plan
from bagel.llm import Routing
from bagel.velocity import VelocityModel

from reference_forward import Sequence, reference_forward

PARAMS = SamplerParams(
    num_timesteps=5,
    cfg_text_scale=4.0,
    cfg_img_scale=2.0,
    cfg_interval=(0.7, 1.0),  # t = 1, .9, .75, .5: the last step runs without guidance
)
SIDE = 32  # 2×2 latent tokens per frame


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))


def session_contexts(pipe):
    """[text, image, text] as a session holds it: main, text-dropped (a prefix view of
    main before the last text), image-dropped (texts only)."""
    main, texts = pipe.new_context(), pipe.new_context()
    for ctx in (main, texts):
        pipe.append_text(ctx, "a corridor")
    pipe.append_image(main, picture(0), generator=torch.Generator().manual_seed(0))
    text_dropped = main.prefix(main.length, main.rope)
    for ctx in (main, texts):
        pipe.append_text(ctx, "walk forward")
    return main, text_dropped, texts


def frame_noise(n: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, 16, SIDE // 8, SIDE // 8, generator=torch.Generator().manual_seed(seed))


def keys(ctx, layer: int) -> torch.Tensor:
    return torch.cat([k for k, _ in ctx.chunks(layer)], dim=1)


# -- schedules ------------------------------------------------------------------------


def frame_steps(plan):
    """frame -> [(iteration, step index), ...] and the largest window."""
    steps: dict[int, list[tuple[int, int]]] = {}
    for s, frames in enumerate(plan):
        for f, i in frames:
            steps.setdefault(f, []).append((s, i))
    return steps, max(len(frames) for frames in plan)


@pytest.mark.parametrize(
    "schedule, window", [("autoregressive", 1), ("pyramid", 2), ("pyramid", 3), ("uniform", 2)]
)
def test_every_frame_takes_the_whole_schedule_in_order(schedule, window):
    plan = forcing_plan(schedule, 5, window, 5)
    steps, widest = frame_steps(plan)
    assert sorted(steps) == list(range(5)) and widest <= window
    t = flow_timesteps(5, 3.0)
    for f, taken in steps.items():
        first = taken[0][0]
        assert taken == [(first + i, i) for i in range(4)], f  # consecutive iterations
        assert t[taken[-1][1] + 1] == 0.0  # every frame ends at t = 0
    assert all([f for f, _ in frames] == sorted(f for f, _ in frames) for frames in plan)


def test_pyramid_lags_and_uniform_shares_t():
    # 4 Euler steps, window 2: frame f + 1 lags frame f by 2 steps (noisier)
    pyramid = forcing_plan("pyramid", 3, 2, 5)
    assert pyramid[:4] == [[(0, 0)], [(0, 1)], [(0, 2), (1, 0)], [(0, 3), (1, 1)]]
    assert pyramid[4:] == [[(1, 2), (2, 0)], [(1, 3), (2, 1)], [(2, 2)], [(2, 3)]]
    # window ≥ steps: a one-step lag, at most `steps` frames under way
    assert forcing_plan("pyramid", 6, 10, 5)[4] == [(1, 3), (2, 2), (3, 1), (4, 0)]
    uniform = forcing_plan("uniform", 3, 2, 5)
    assert uniform == [[(0, i), (1, i)] for i in range(4)] + [[(2, i)] for i in range(4)]
    auto = forcing_plan("autoregressive", 2, 1, 5)
    assert auto == [[(f, i)] for f in range(2) for i in range(4)]
    assert forcing_plan("pyramid", 2, 1, 5) == forcing_plan("uniform", 2, 1, 5) == auto


# -- window 1 == the single-image sampler ---------------------------------------------


def sequential_frames(pipe, n, noise, seed):
    """n calls of generate_image, each frame appended as an input image before the next,
    with the contexts advancing as a session's do after a generated image."""
    main, text_dropped, texts = session_contexts(pipe)
    g = torch.Generator().manual_seed(seed)
    latents = []
    for k in range(n):
        out = pipe.generate_image(
            main,
            SIDE,
            SIDE,
            PARAMS,
            cfg_text_ctx=text_dropped,
            cfg_img_ctx=texts,
            noise=None if noise is None else noise[k],
            generator=g,
        )
        latents.append(out.latent)
        pipe.append_image(main, out.image, generator=g)
        text_dropped = main.prefix(main.length, main.rope)  # follows main after an image
    return latents, main


@pytest.mark.parametrize("given_noise", [True, False])
def test_window_one_equals_generate_image_frame_by_frame(pipe, given_noise):
    # (with window 1 the three schedules make the same plan: see the schedule tests)
    noise = frame_noise(3) if given_noise else None
    expected, expected_ctx = sequential_frames(pipe, 3, noise, seed=5)
    main, text_dropped, texts = session_contexts(pipe)
    frames = pipe.predict_frames(
        main,
        3,
        SIDE,
        SIDE,
        PARAMS,
        window=1,
        schedule="autoregressive",
        cfg_text_ctx=text_dropped,
        cfg_img_ctx=texts,
        noise=noise,
        generator=torch.Generator().manual_seed(5),
    )
    assert len(frames) == 3
    for k, (frame, latent) in enumerate(zip(frames, expected, strict=True)):
        assert torch.equal(frame.latent, latent), f"frame {k}"
    assert (main.length, main.rope) == (expected_ctx.length, expected_ctx.rope)
    assert torch.equal(keys(main, 1), keys(expected_ctx, 1))
    assert not torch.equal(frames[0].latent, frames[1].latent)


# -- the frame mask -------------------------------------------------------------------


def window_velocity(pipe, x, t, branches):
    return pipe.frames_velocity(x, t, (2, 2), branches, [True, True, False])


def test_frame_sees_earlier_frames_and_itself_only(pipe):
    main, text_dropped, texts = session_contexts(pipe)
    branches = [main, text_dropped, texts]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 64, generator=g)
    t = torch.tensor([0.3, 0.6, 0.9])
    base = window_velocity(pipe, x, t, branches)  # [B, W, N, 64]

    later = x.clone()
    later[2] += 1.0  # a later frame's noise: earlier frames do not see it
    out = window_velocity(pipe, later, t, branches)
    assert torch.equal(out[:, :2], base[:, :2])
    assert not torch.equal(out[:, 2], base[:, 2])

    earlier = x.clone()
    earlier[0] += 1.0  # an earlier frame's noise: later frames see it in main / text-dropped
    out = window_velocity(pipe, earlier, t, branches)
    for j in (1, 2):
        assert not torch.allclose(out[:2, j], base[:2, j])
        assert torch.equal(out[2, j], base[2, j])  # the image-dropped branch holds no images

    inside = x.clone()
    inside[1, 3] += 1.0  # the last token of frame 1: its first token sees it (bidirectional)
    out = window_velocity(pipe, inside, t, branches)
    assert not torch.allclose(out[:, 1, 0], base[:, 1, 0])
    assert torch.equal(out[:, 0], base[:, 0])


@torch.inference_mode()
def test_window_matches_a_full_recompute_with_the_frames_in_the_sequence(pipe):
    """Frame j of a packed window == a cache-free forward of [context, frames 0..j] with
    every frame a full-attention image block at rope + 2j (spec §3.4, §3.5)."""
    ctx = pipe.new_context()
    seq = Sequence()
    ids = torch.tensor(pipe.tokenizer.frame("a corridor, walk forward"))
    pipe.append_text(ctx, "a corridor, walk forward")
    seq.add_text(pipe.net.embed_tokens(ids))
    x = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.2, 0.5, 1.0])
    out = pipe.frames_velocity(x, t, (2, 2), [ctx, ctx], [True, False])
    blocks = [
        wrap_image(pipe.net, pipe.tokenizer, pipe.net.latent_tokens(x[j], t[j : j + 1], (2, 2)))
        for j in range(3)
    ]
    lm = pipe.net.language_model
    for j in range(3):
        window, alone = seq.copy(), seq.copy()
        for i in range(j + 1):
            window.add_image(blocks[i], latent=True)
            window.rope += 1  # the ViT block the frame will have when committed
        alone.add_image(blocks[j], latent=True)
        for branch, full in ((0, window), (1, alone)):
            hidden = reference_forward(lm, *full.tensors())[-5:-1]  # frame j's latent rows
            expected = pipe.net.llm2vae(hidden)
            torch.testing.assert_close(out[branch, j], expected, rtol=1e-4, atol=1e-4)


# -- the sampler ----------------------------------------------------------------------


def test_pyramid_runs_each_frame_at_its_own_timestep_and_commits_in_order(pipe, monkeypatch):
    main, text_dropped, texts = session_contexts(pipe)
    before = (main.length, main.rope)
    calls, committed = [], []
    original = VelocityModel.frames_velocity

    def spy(model, x, t, grid, branches, see, *rest):
        calls.append((t.tolist(), len(branches), [c.rope for c in branches]))
        return original(model, x, t, grid, branches, see, *rest)

    def commit(index, frame):
        committed.append((index, frame))
        pipe.append_image(main, frame.image, generator=torch.Generator().manual_seed(index))
        return main, main.prefix(main.length, main.rope), texts

    monkeypatch.setattr(VelocityModel, "frames_velocity", spy)
    frames = pipe.predict_frames(
        main,
        3,
        SIDE,
        SIDE,
        PARAMS,
        window=2,
        schedule="pyramid",
        cfg_text_ctx=text_dropped,
        cfg_img_ctx=texts,
        noise=frame_noise(3),
        commit=commit,
    )
    t = flow_timesteps(5, 3.0).tolist()
    plan = forcing_plan("pyramid", 3, 2, 5)
    assert [c[0] for c in calls] == [[t[i] for _, i in frames_] for frames_ in plan]
    # all three branches while any frame in the window is in (0.7, 1] (its steps 0..2)
    assert [c[1] for c in calls] == [3, 3, 3, 3, 3, 3, 3, 1]
    assert [i for i, _ in committed] == [0, 1, 2]
    assert [f for _, f in committed] == frames
    # frame 0 sits at the main rope; after it commits (two positions), frame 1 keeps rope + 2
    assert calls[0][2] == [before[1], text_dropped.rope, texts.rope]
    assert calls[4][2] == [before[1] + 2, before[1] + 2, texts.rope]
    assert main.rope == before[1] + 2 * 3
    assert len({tuple(f.latent.flatten().tolist()) for f in frames}) == 3


@torch.inference_mode()
def prefill_noisy_frame(pipe, ctx, x, t):
    """Cache a noisy frame block at ctx.rope, advancing 2 (its place once committed)."""
    block = wrap_image(pipe.net, pipe.tokenizer, pipe.net.latent_tokens(x, t.reshape(1), (2, 2)))
    routing = Routing.latent_spans(6, [(1, 5)])
    prefill(
        pipe.net,
        pipe.backend,
        ctx,
        block,
        torch.full((6,), ctx.rope),
        routing,
        causal=False,
        rope_advance=2,
    )


def reference_frames(pipe, schedule, window, noise, images, seed):
    """The window sampler spelled out with the single-image forward: for frame j, the
    noisy frames before it are prefilled into forks of the main and text-dropped contexts;
    all three branches run at every step; the finished frames (the given images) are
    appended as input images and the text-dropped context then follows main."""
    main, text_dropped, texts = session_contexts(pipe)
    g = torch.Generator().manual_seed(seed)
    t = flow_timesteps(PARAMS.num_timesteps, PARAMS.timestep_shift)
    routing = Routing.latent_spans(6, [(1, 5)])
    x, latents = {}, []
    for frames in forcing_plan(schedule, len(noise), window, PARAMS.num_timesteps):
        stepped = {}
        for j, (f, i) in enumerate(frames):
            x.setdefault(f, patchify_latent(noise[f]))
            forks = [main.fork(), text_dropped.fork()]
            for e, ie in frames[:j]:
                for fork in forks:
                    prefill_noisy_frame(pipe, fork, x[e], t[ie])
            v = pipe.velocity(x[f], t[i], (2, 2), [*forks, texts], routing)
            scales = cfg_scales(float(t[i]), PARAMS)
            guided = cfg_combine(*v, *scales, PARAMS.cfg_renorm_type, PARAMS.cfg_renorm_min)
            stepped[f] = euler_step(x[f], guided, t[i] - t[i + 1])
        x.update(stepped)
        for f, i in frames:
            if i == PARAMS.num_timesteps - 2:
                latents.append(unpatchify_latent(x.pop(f), 2, 2, 16))
                pipe.append_image(main, images[f], generator=g)
                text_dropped = main.prefix(main.length, main.rope)
    return latents, main


@pytest.mark.parametrize("schedule, window", [("pyramid", 2), ("uniform", 3)])
def test_window_sampler_matches_the_spelled_out_reference(pipe, schedule, window):
    main, text_dropped, texts = session_contexts(pipe)
    noise = frame_noise(3)
    frames = pipe.predict_frames(
        main,
        3,
        SIDE,
        SIDE,
        PARAMS,
        window=window,
        schedule=schedule,
        cfg_text_ctx=text_dropped,
        cfg_img_ctx=texts,
        noise=noise,
        generator=torch.Generator().manual_seed(4),
    )
    images = [frame.image for frame in frames]
    latents, expected_ctx = reference_frames(pipe, schedule, window, noise, images, seed=4)
    for k, (frame, latent) in enumerate(zip(frames, latents, strict=True)):
        torch.testing.assert_close(frame.latent, latent, rtol=1e-4, atol=1e-4, msg=f"frame {k}")
    # the default commit appended each frame as an input image, head first
    assert (main.length, main.rope) == (expected_ctx.length, expected_ctx.rope)
    assert torch.equal(keys(main, 1), keys(expected_ctx, 1))


def test_cancel_before_the_first_commit_leaves_the_context(pipe):
    main, text_dropped, texts = session_contexts(pipe)
    before = (main.length, main.rope)

    def progress(done, total):
        assert total == 8
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipe.predict_frames(
            main,
            2,
            SIDE,
            SIDE,
            PARAMS,
            window=1,
            cfg_text_ctx=text_dropped,
            cfg_img_ctx=texts,
            progress=progress,
        )
    assert (main.length, main.rope) == before


@pytest.fixture(scope="module")
def bad_input_contexts(pipe):
    return session_contexts(pipe)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(window=0), "window must be a positive integer"),
        (dict(window=1.5), "window must be a positive integer"),
        (dict(n_frames=0), "n_frames must be a positive integer"),
        (dict(schedule="spiral"), "schedule must be one of"),
        (dict(schedule="autoregressive", window=2), "one frame at a time"),
        (dict(noise=frame_noise(2)), r"noise must be a tensor of shape \(3,"),
        (dict(noise=torch.randn(3, 16, 8, 8)), "noise has latent size"),
        (dict(cfg_img_ctx=None), "needs cfg_img_ctx"),
        (dict(height=40), "height 40 must be a multiple of 16"),
    ],
)
def test_bad_input_changes_nothing(pipe, bad_input_contexts, overrides, message):
    main, text_dropped, texts = bad_input_contexts
    before = (main.length, main.rope, texts.length, texts.rope)
    args = dict(
        n_frames=3,
        height=SIDE,
        width=SIDE,
        window=2,
        schedule="pyramid",
        cfg_text_ctx=text_dropped,
        cfg_img_ctx=texts,
    )
    args.update(overrides)
    with pytest.raises(InputError, match=message):
        pipe.predict_frames(main, params=PARAMS, **args)
    assert (main.length, main.rope, texts.length, texts.rope) == before

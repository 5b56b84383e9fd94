"""Context operations on the tiny checkpoint: cached == recomputed, batched == separate,
determinism, and bad input that leaves contexts unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bagel.contexts import wrap_image
from bagel.embeddings import patchify_latent, unpatchify_latent
from bagel.errors import ImageError, InputError
from bagel.flow import SamplerParams, cfg_combine, cfg_scales, euler_step, flow_timesteps
from bagel.image import to_tensor
from bagel.llm import Routing
from bagel.velocity import VelocityModel

from reference_forward import Sequence, reference_forward

PARAMS = SamplerParams(
    num_timesteps=6,
    cfg_text_scale=4.0,
    cfg_img_scale=2.0,
    cfg_interval=(0.0, 1.0),
    cfg_renorm_type="global",
)


def picture(seed: int = 0, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def text_embeds(pipe, text):
    return pipe.net.embed_tokens(torch.tensor(pipe.tokenizer.frame(text)))


def image_embeds(pipe, tokens):
    return wrap_image(pipe.net, pipe.tokenizer, tokens)


@torch.inference_mode()
def latent_segment(pipe, latent, t=0.0):
    p = pipe.config.latent_patch_size
    grid = (latent.shape[1] // p, latent.shape[2] // p)
    return image_embeds(
        pipe, pipe.net.latent_tokens(patchify_latent(latent, p), torch.tensor([t]), grid)
    )


@torch.inference_mode()
def vit_segment(pipe, image):
    return image_embeds(pipe, pipe.net.vit_tokens(to_tensor(pipe.vit_rule.resize(image))))


@pytest.fixture(scope="module")
def edit_setup(pipe):
    """An edit context built turn by turn, and the same content as reference sequences."""
    image = pipe.prepare_image(picture())
    latent = pipe.encode_latent(image, posterior_mean=True)
    main, img_dropped = pipe.new_context(), pipe.new_context()
    seq, seq_img = Sequence(), Sequence()
    pipe.append_text(main, "a red cat")
    seq.add_text(text_embeds(pipe, "a red cat"))
    pipe.append_text(img_dropped, "a red cat")
    seq_img.add_text(text_embeds(pipe, "a red cat"))
    pipe.append_latent(main, latent)
    seq.add_image(latent_segment(pipe, latent), latent=True)
    pipe.append_vit(main, image)
    seq.add_image(vit_segment(pipe, image), latent=False)
    text_dropped = main.prefix(main.length, main.rope)
    seq_txt = seq.copy()
    pipe.append_text(main, "make it blue")
    seq.add_text(text_embeds(pipe, "make it blue"))
    pipe.append_text(img_dropped, "make it blue")
    seq_img.add_text(text_embeds(pipe, "make it blue"))
    return dict(
        image=image,
        main=main,
        text_dropped=text_dropped,
        img_dropped=img_dropped,
        seq=seq,
        seq_txt=seq_txt,
        seq_img=seq_img,
    )


def test_context_bookkeeping(pipe, edit_setup):
    main, seq = edit_setup["main"], edit_setup["seq"]
    embeds, positions, _, _ = seq.tensors()
    assert main.length == embeds.shape[0]
    assert main.rope == seq.rope  # each image advanced rope by exactly one
    h, w = edit_setup["image"].height // 16, edit_setup["image"].width // 16
    assert seq.embeds[1].shape[0] == h * w + 2  # VAE block: markers + latent tokens


def test_next_token_logits_match_full_recompute(pipe, edit_setup):
    main, seq = edit_setup["main"], edit_setup["seq"].copy()
    length_before = main.length
    scores = pipe.generate_text(main, max_new_tokens=1, output_scores=True).scores
    seq.add_text(pipe.net.embed_tokens(torch.tensor([pipe.tokenizer.bos_id])))  # causal row
    hidden = reference_forward(pipe.net.language_model, *seq.tensors())
    expected = pipe.net.language_model.lm_head(hidden[-1])
    torch.testing.assert_close(scores[0], expected, rtol=1e-4, atol=1e-4)
    assert main.length == length_before  # generation ran on a fork


def reference_sample(pipe, seqs, noise, params, h, w):
    """The sampler with every branch recomputed from scratch at every step."""
    x = patchify_latent(noise, 2)
    t = flow_timesteps(params.num_timesteps, params.timestep_shift)
    for i in range(params.num_timesteps - 1):
        with torch.inference_mode():
            query = image_embeds(pipe, pipe.net.latent_tokens(x, t[i].reshape(1), (h, w)))
        velocities = []
        for seq in seqs:
            branch = seq.copy()
            branch.add_image(query, latent=True)
            hidden = reference_forward(pipe.net.language_model, *branch.tensors())
            with torch.inference_mode():
                velocities.append(pipe.net.llm2vae(hidden[-query.shape[0] + 1 : -1]))
        ts, si = cfg_scales(float(t[i]), params)
        v = cfg_combine(*velocities, ts, si, params.cfg_renorm_type, params.cfg_renorm_min)
        x = euler_step(x, v, t[i] - t[i + 1])
    return unpatchify_latent(x, h, w, 16, 2)


@pytest.mark.parametrize("renorm", ["global", "text_channel"])
def test_generated_latent_matches_full_recompute(pipe, edit_setup, renorm):
    s = edit_setup
    params = SamplerParams(**{**PARAMS.__dict__, "cfg_renorm_type": renorm})
    noise = torch.randn(16, 8, 8, generator=torch.Generator().manual_seed(1))
    out = pipe.generate_image(
        s["main"],
        64,
        64,
        params,
        cfg_text_ctx=s["text_dropped"],
        cfg_img_ctx=s["img_dropped"],
        noise=noise,
    )
    expected = reference_sample(pipe, [s["seq"], s["seq_txt"], s["seq_img"]], noise, params, 4, 4)
    torch.testing.assert_close(out.latent, expected, rtol=1e-4, atol=1e-4)


def test_batched_cfg_branches_equal_separate_forwards(pipe, edit_setup):
    s = edit_setup
    branches = [s["main"], s["text_dropped"], s["img_dropped"]]
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    routing = Routing.latent_spans(18, [(1, 17)])
    t = torch.tensor(0.7)
    batched = pipe.velocity(x, t, (4, 4), branches, routing)
    separate = torch.cat([pipe.velocity(x, t, (4, 4), [b], routing) for b in branches])
    torch.testing.assert_close(batched, separate, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(separate[0], separate[1])  # the branches really differ


@pytest.mark.parametrize("size", [(64, 48), (30, 100), (200, 40)])
def test_image_token_counts_match_what_the_appends_add(pipe, size):
    ctx = pipe.new_context()
    prepared = pipe.prepare_image(picture(4, size))
    vae = pipe.append_latent(ctx, pipe.encode_latent(prepared, posterior_mean=True))
    vit = pipe.append_vit(ctx, prepared)
    assert pipe.image_token_counts(*size) == (vae, vit)


def test_appending_never_moves_earlier_tokens(pipe):
    ctx = pipe.new_context()
    pipe.append_text(ctx, "first turn")
    block, _, rows = ctx.spans[0]
    snapshot = block.k[0][:, :rows].clone()
    pointer = block.k[0].data_ptr()
    pipe.append_text(ctx, "second turn")
    pipe.append_image(ctx, picture(3), posterior_mean=True)
    assert ctx.spans[0][0].k[0].data_ptr() == pointer
    torch.testing.assert_close(ctx.spans[0][0].k[0][:, :rows], snapshot, rtol=0, atol=0)


def test_text_generation_is_deterministic(pipe, edit_setup):
    main = edit_setup["main"]
    greedy = [pipe.generate_text(main, max_new_tokens=8).token_ids for _ in range(2)]
    assert greedy[0] == greedy[1] and len(greedy[0]) > 0
    sampled = [
        pipe.generate_text(
            main, 8, do_sample=True, temperature=1.0, generator=torch.Generator().manual_seed(s)
        ).token_ids
        for s in (5, 5, 6)
    ]
    assert sampled[0] == sampled[1]
    assert sampled[0] != sampled[2]


def test_image_generation_is_deterministic_for_a_seed(pipe):
    ctx, empty = pipe.new_context(), pipe.new_context()
    pipe.append_text(ctx, "a house")
    params = SamplerParams(num_timesteps=4, cfg_img_scale=1.0)

    def run(seed):
        return pipe.generate_image(
            ctx, 32, 48, params, cfg_text_ctx=empty, generator=torch.Generator().manual_seed(seed)
        )

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.latent, b.latent)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not torch.equal(a.latent, c.latent)
    assert a.image.size == (48, 32) and a.latent.shape == (16, 4, 6)


def test_initial_noise_is_drawn_in_token_layout_on_the_cpu_generator(pipe):
    ctx = pipe.new_context()
    params = SamplerParams(num_timesteps=2, cfg_text_scale=1.0)
    drawn = pipe.generate_image(ctx, 32, 32, params, generator=torch.Generator().manual_seed(7))
    tokens = torch.randn(4, 64, generator=torch.Generator().manual_seed(7))
    given = pipe.generate_image(ctx, 32, 32, params, noise=unpatchify_latent(tokens, 2, 2, 16))
    assert torch.equal(drawn.latent, given.latent)


def test_vae_posterior_sampling_follows_the_generator(pipe):
    image = pipe.prepare_image(picture(4))
    a = pipe.encode_latent(image, torch.Generator().manual_seed(0))
    b = pipe.encode_latent(image, torch.Generator().manual_seed(0))
    c = pipe.encode_latent(image, torch.Generator().manual_seed(1))
    mean = pipe.encode_latent(image, torch.Generator().manual_seed(1), posterior_mean=True)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(mean, pipe.encode_latent(image, posterior_mean=True))


def test_text_guidance_off_runs_only_the_main_branch(pipe, monkeypatch):
    ctx = pipe.new_context()
    pipe.append_text(ctx, "a tree")
    calls = []
    original = VelocityModel.velocity
    monkeypatch.setattr(
        VelocityModel, "velocity", lambda *a: calls.append(len(a[4])) or original(*a)
    )
    pipe.generate_image(
        ctx, 32, 32, SamplerParams(num_timesteps=3, cfg_text_scale=1.0, cfg_img_scale=3.0)
    )
    assert calls == [1, 1]


def test_progress_callback_can_cancel_without_touching_contexts(pipe):
    ctx, empty = pipe.new_context(), pipe.new_context()
    pipe.append_text(ctx, "a boat")
    before = (ctx.length, ctx.rope)
    seen = []

    def progress(done, total):
        seen.append((done, total))
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipe.generate_image(
            ctx,
            32,
            32,
            SamplerParams(num_timesteps=5, cfg_img_scale=1.0),
            cfg_text_ctx=empty,
            progress=progress,
        )
    assert seen == [(1, 4), (2, 4)] and (ctx.length, ctx.rope) == before


# -- bad input: clear errors, contexts unchanged ---------------------------------------


def unchanged(ctx):
    return (ctx.length, ctx.rope, [(id(b), a, z) for b, a, z in ctx.spans])


def test_text_beyond_the_position_limit_is_refused_before_any_change(pipe):
    ctx = pipe.new_context()
    pipe.append_text(ctx, "start")
    before = unchanged(ctx)
    limit = pipe.config.llm.max_position_embeddings
    with pytest.raises(InputError, match=f"position limit is {limit}"):
        pipe.append_text(ctx, "word " * limit)
    assert unchanged(ctx) == before


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((30, 32), "height 30 must be a multiple of 16"),
        ((32, 0), "width 0 must be a multiple of 16"),
        ((32, 4096), "width 4096 must be a multiple of 16 between 16 and 128"),
        ((32.0, 32), "height must be an integer"),
    ],
)
def test_bad_image_sizes(pipe, size, message):
    with pytest.raises(InputError, match=message):
        pipe.generate_image(pipe.new_context(), *size, SamplerParams(cfg_text_scale=1.0))


def test_missing_guidance_contexts_and_bad_noise(pipe):
    ctx = pipe.new_context()
    with pytest.raises(InputError, match="needs cfg_text_ctx"):
        pipe.generate_image(ctx, 32, 32, SamplerParams(cfg_text_scale=4.0))
    with pytest.raises(InputError, match="needs cfg_img_ctx"):
        pipe.generate_image(ctx, 32, 32, SamplerParams(), cfg_text_ctx=ctx)
    params = SamplerParams(cfg_text_scale=1.0)
    with pytest.raises(InputError, match=r"shape \(16, H/8, W/8\), got \(4, 4, 4\)"):
        pipe.generate_image(ctx, 32, 32, params, noise=torch.zeros(4, 4, 4))
    with pytest.raises(
        InputError, match="noise has latent size 8x8; the requested image needs 4x4"
    ):
        pipe.generate_image(ctx, 32, 32, params, noise=torch.zeros(16, 8, 8))
    with pytest.raises(InputError, match="NaN"):
        pipe.generate_image(ctx, 32, 32, params, noise=torch.full((16, 4, 4), float("nan")))


def test_bad_text_generation_arguments(pipe):
    ctx = pipe.new_context()
    with pytest.raises(InputError, match="max_new_tokens"):
        pipe.generate_text(ctx, max_new_tokens=0)
    with pytest.raises(InputError, match="temperature must be > 0"):
        pipe.generate_text(ctx, do_sample=True, temperature=0.0)


def test_bad_images_leave_the_context_unchanged(pipe, tmp_path):
    ctx = pipe.new_context()
    pipe.append_text(ctx, "before")
    before = unchanged(ctx)
    truncated = tmp_path / "cut.png"
    picture(5).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    for source, message in [
        (tmp_path / "nope.png", "not found"),
        (b"not an image", "<bytes>"),
        (str(truncated), "truncated"),
        (Image.new("RGB", (2000, 10)), "aspect ratio"),
    ]:
        with pytest.raises(ImageError, match=message):
            pipe.append_image(ctx, source)
        assert unchanged(ctx) == before


def test_odd_images_are_converted(pipe):
    for image in [
        Image.new("RGBA", (40, 30), (0, 0, 0, 0)),
        Image.new("P", (20, 20)),
        Image.new("CMYK", (33, 17)),
        Image.new("I;16", (5, 3)),
        Image.new("RGB", (1, 1)),
    ]:
        ctx = pipe.new_context()
        prepared = pipe.append_image(ctx, image, posterior_mean=True)
        assert prepared.mode == "RGB" and prepared.width % 16 == 0 and prepared.height % 16 == 0
        assert ctx.rope == 2


def test_bfloat16_path_tracks_float32(pipe, tiny_dir):
    """The GPU default dtype: bf16 weights and KV, float32 latents and autoencoder."""
    from bagel.checkpoint import load

    half = load(tiny_dir, dtype="bfloat16")
    assert half.kv_layout.dtype == torch.bfloat16
    assert next(half.ae.parameters()).dtype == torch.float32
    noise = torch.randn(16, 4, 4, generator=torch.Generator().manual_seed(3))
    latents = []
    for p in (half, pipe):
        ctx, empty = p.new_context(), p.new_context()
        p.append_text(ctx, "a cat")
        p.append_image(ctx, picture(6, (32, 32)), posterior_mean=True)
        out = p.generate_image(
            ctx,
            32,
            32,
            SamplerParams(num_timesteps=4, cfg_img_scale=1.0),
            cfg_text_ctx=empty,
            noise=noise,
        )
        assert out.latent.dtype == torch.float32
        latents.append(out.latent)
    error = (latents[0] - latents[1]).abs().max() / latents[1].abs().max()
    assert 0 < error < 0.05  # bf16 rounding, not a different computation

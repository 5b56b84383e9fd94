"""The TaylorSeer feature cache: its schedule, its extrapolation, a re-statement of the
official update rule, and the sampler with the cache on the tiny checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from bagel.contexts import wrap_image
from bagel.errors import InputError
from bagel.flow import SamplerParams, cfg_scales, flow_timesteps
from bagel.llm import Routing
from bagel.sampling import guide
from bagel.taylorseer import TaylorCache, is_full_step

SIDE = 32  # 2×2 latent tokens


def session_contexts(pipe):
    """Main [text, image, text], text-dropped (a prefix view), image-dropped (texts)."""
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))
    main, texts = pipe.new_context(), pipe.new_context()
    for ctx in (main, texts):
        pipe.append_text(ctx, "a corridor")
    pipe.append_image(main, picture, generator=torch.Generator().manual_seed(0))
    text_dropped = main.prefix(main.length, main.rope)
    for ctx in (main, texts):
        pipe.append_text(ctx, "walk forward")
    return main, text_dropped, texts


def frame_noise(n: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, 16, SIDE // 8, SIDE // 8, generator=torch.Generator().manual_seed(seed))


class OfficialRule:
    """The official cache of one branch, re-stated from its description: a counter that
    forces a full step for the first 5 forwards and whenever it reaches threshold − 1,
    per-step activated-step bookkeeping, and a dict of Taylor factors refreshed on full
    steps (derivatives only once step > first_enhance − 2)."""

    def __init__(self, threshold: int = 3, first_enhance: int = 5, max_order: int = 6):
        self.threshold, self.first_enhance, self.max_order = threshold, first_enhance, max_order
        self.counter, self.step, self.activated, self.factors = 0, 0, [0], {}

    def kind(self) -> str:
        if self.step < self.first_enhance or self.counter == self.threshold - 1:
            self.counter = 0
            self.activated.append(self.step)
            return "full"
        self.counter += 1
        return "taylor"

    def full(self, feature):
        distance = self.activated[-1] - self.activated[-2]
        new = {0: feature}
        for i in range(self.max_order):
            if self.factors.get(i) is not None and self.step > self.first_enhance - 2:
                new[i + 1] = (new[i] - self.factors[i]) / distance
            else:
                break
        self.factors = new
        self.step += 1

    def taylor(self):
        x = self.step - self.activated[-1]
        out = 0
        for i in range(len(self.factors)):
            out += (1 / math.factorial(i)) * self.factors[i] * (x**i)
        self.step += 1
        return out


def test_full_steps_of_the_default_schedule():
    full = [s for s in range(50) if is_full_step(s)]
    assert full == [0, 1, 2, 3, 4, *range(7, 50, 3)]
    assert all(is_full_step(s, interval=1) for s in range(50))
    assert [s for s in range(20) if is_full_step(s, interval=4)] == [0, 1, 2, 3, 4, 8, 12, 16]


@pytest.mark.parametrize("interval", [1, 2, 3, 5])
def test_schedule_and_values_equal_the_official_rule(interval):
    torch.manual_seed(0)
    ours, official = TaylorCache(interval), OfficialRule(threshold=interval)
    for step in range(40):
        feature = torch.randn(3, 5) + step * torch.linspace(-1, 1, 5)
        kind = official.kind()
        assert ours.full_step() == (kind == "full"), step
        if kind == "full":
            ours.update(feature)
            official.full(feature)
            continue
        assert torch.equal(ours.predict(), official.taylor()), step
    assert len(ours.factors) == 7  # value and six orders of differences


def test_a_linear_trajectory_is_extrapolated_exactly():
    a, b = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0])
    cache = TaylorCache()
    for step in range(30):
        truth = a + b * step
        if cache.full_step():
            cache.update(truth)
        else:
            torch.testing.assert_close(cache.predict(), truth)


def test_a_quadratic_trajectory_against_a_hand_count():
    cache, got = TaylorCache(), {}
    for step in range(10):
        feature = torch.tensor(float(step**2))
        if cache.full_step():
            cache.update(feature)
        else:
            got[step] = float(cache.predict())
    # after step 4: [16, 16 - 9]; after step 7: [49, (49 - 16)/3, ((49 - 16)/3 - 7)/3]
    assert got[5] == pytest.approx(16 + 7)
    assert got[6] == pytest.approx(16 + 14)
    assert got[8] == pytest.approx(49 + 11 + (4 / 3) / 2)
    assert got[9] == pytest.approx(49 + 22 + (4 / 3) / 2 * 4)


def test_bad_feature_cache_settings():
    with pytest.raises(InputError, match="feature_cache must be one of"):
        SamplerParams(feature_cache="fora")
    with pytest.raises(InputError, match="feature_cache_interval must be an integer >= 1"):
        SamplerParams(feature_cache="taylorseer", feature_cache_interval=0)


# -- the sampler with the cache -------------------------------------------------------


def sample(pipe, contexts, params, seed=3):
    main, text, img = contexts
    noise = frame_noise(1, seed)[0]
    return pipe.generate_image(
        main, 32, 32, params, cfg_text_ctx=text, cfg_img_ctx=img, noise=noise
    ).latent


def test_every_step_full_equals_uncached_bit_for_bit(pipe):
    contexts = session_contexts(pipe)
    base = SamplerParams(num_timesteps=12, cfg_text_scale=4.0, cfg_img_scale=2.0)
    cached = SamplerParams(**{**base.__dict__, "feature_cache": "taylorseer"})
    every = SamplerParams(**{**cached.__dict__, "feature_cache_interval": 1})
    plain = sample(pipe, contexts, base)
    assert torch.equal(sample(pipe, contexts, every), plain)
    assert not torch.equal(sample(pipe, contexts, cached), plain)  # steps were skipped


def official_sample(pipe, contexts, params, h=2, w=2):
    """The official cached loop, branch by branch, with `OfficialRule` per branch: the
    text- and image-dropped branches step only when their guidance is on."""
    x = frame_noise(1, 3)[0].reshape(16, h, 2, w, 2).permute(1, 3, 2, 4, 0).reshape(h * w, 64)
    t = flow_timesteps(params.num_timesteps, params.timestep_shift)
    rules = [OfficialRule(params.feature_cache_interval) for _ in contexts]
    routing = Routing.latent_spans(h * w + 2, [(1, h * w + 1)])
    lm = pipe.net.language_model
    for i in range(params.num_timesteps - 1):
        text_scale, img_scale = cfg_scales(float(t[i]), params)
        active = [0] + ([1] if text_scale > 1 else []) + ([2] if img_scale > 1 else [])
        with torch.inference_mode():
            query = wrap_image(
                pipe.net, pipe.tokenizer, pipe.net.latent_tokens(x, t[i].reshape(1), (h, w))
            )
            hidden = []
            for b in active:
                rule, ctx = rules[b], contexts[b]
                if rule.kind() == "full":
                    feature = lm(
                        query[None],
                        torch.full((1, h * w + 2), ctx.rope),
                        routing,
                        [ctx],
                        causal=False,
                        write=False,
                        backend=pipe.backend,
                        norm=False,
                    )[0]
                    rule.full(feature)
                else:
                    feature = rule.taylor()
                hidden.append(feature)
            v = pipe.net.llm2vae(lm.final_norm(torch.stack(hidden), routing)[:, 1:-1])
        x = x - guide(v, float(t[i]), params) * (t[i] - t[i + 1])
    return x


def test_cached_sampling_equals_the_official_cached_loop(pipe):
    contexts = session_contexts(pipe)
    # guidance on only for t <= 0.8: the guidance branches start late and count their own
    # forwards, so their full steps differ from the main branch's
    params = SamplerParams(
        num_timesteps=14,
        cfg_text_scale=4.0,
        cfg_img_scale=2.0,
        cfg_interval=(0.1, 0.8),
        feature_cache="taylorseer",
    )
    ours = sample(pipe, contexts, params)
    expected = official_sample(pipe, contexts, params)
    tokens = ours.reshape(16, 2, 2, 2, 2).permute(1, 3, 2, 4, 0).reshape(4, 64)
    torch.testing.assert_close(tokens, expected, rtol=1e-5, atol=1e-5)


def test_the_decoder_runs_only_on_full_steps(pipe, monkeypatch):
    contexts = session_contexts(pipe)
    lm = pipe.net.language_model
    calls = []
    original = type(lm).forward

    def counting(self, x, *args, **kwargs):
        calls.append(x.shape[0])
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(type(lm), "forward", counting)
    params = SamplerParams(num_timesteps=12, cfg_interval=(0.0, 1.0), feature_cache="taylorseer")
    sample(pipe, contexts, params)
    assert calls == [3] * 7  # steps 0-4, 7, 10 of 11; all three branches each time


def test_frames_window_one_with_every_step_full_equals_uncached(pipe):
    base = SamplerParams(num_timesteps=3, cfg_text_scale=4.0, cfg_img_scale=2.0)
    every = SamplerParams(
        **{**base.__dict__, "feature_cache": "taylorseer", "feature_cache_interval": 1}
    )
    outs = []
    for params in (base, every):
        main, text, img = session_contexts(pipe)
        frames = pipe.predict_frames(
            main,
            2,
            32,
            32,
            params,
            cfg_text_ctx=text,
            cfg_img_ctx=img,
            noise=frame_noise(2),
            generator=torch.Generator().manual_seed(0),  # the commits' VAE posterior
        )
        outs.append(torch.stack([f.latent for f in frames]))
    assert torch.equal(outs[0], outs[1])


def test_frames_window_above_one_is_refused_before_any_change(pipe):
    main, text, img = session_contexts(pipe)
    length = main.length
    params = SamplerParams(num_timesteps=5, feature_cache="taylorseer")
    with pytest.raises(InputError, match="feature_cache 'taylorseer' needs window 1"):
        pipe.predict_frames(
            main, 3, 32, 32, params, window=2, schedule="pyramid", cfg_text_ctx=text
        )
    assert main.length == length

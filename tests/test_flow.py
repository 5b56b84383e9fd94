"""The sampling math as pure functions, against the spec's formulas and test vector."""

from __future__ import annotations

import pytest
import torch

from bagel.errors import InputError
from bagel.flow import SamplerParams, cfg_combine, cfg_scales, euler_step, flow_timesteps

# spec §7.2: 50 steps, shift 3 → (i, t_i, dt_i)
SPEC_VECTOR = [
    (0, 1.0, 0.0068966),
    (1, 0.9931034, 0.0070894),
    (10, 0.9212598, 0.0092598),
    (24, 0.7575758, 0.0153077),
    (40, 0.4029850, 0.0337543),
    (41, 0.3692308, 0.0358974),
    (48, 0.0588235, 0.0588235),
]


def test_schedule_matches_the_spec_test_vector():
    t = flow_timesteps(50, 3.0)
    for i, t_i, dt_i in SPEC_VECTOR:
        assert float(t[i]) == pytest.approx(t_i, abs=1e-6)
        assert float(t[i] - t[i + 1]) == pytest.approx(dt_i, abs=1e-6)


def test_schedule_endpoints_monotone_and_shift_one_is_identity():
    for n, shift in [(2, 1.0), (10, 3.0), (30, 0.5)]:
        t = flow_timesteps(n, shift)
        assert float(t[0]) == 1.0 and float(t[-1]) == 0.0
        assert bool((t[1:] < t[:-1]).all())
    assert torch.equal(flow_timesteps(11, 1.0), torch.linspace(1, 0, 11))


def test_cfg_interval_is_open_below_closed_above():
    p = SamplerParams(cfg_text_scale=4.0, cfg_img_scale=2.0, cfg_interval=(0.4, 1.0))
    assert cfg_scales(1.0, p) == (4.0, 2.0)
    assert cfg_scales(0.4, p) == (1.0, 1.0)
    assert cfg_scales(0.4001, p) == (4.0, 2.0)
    t = flow_timesteps(50, 3.0)
    active = [i for i in range(49) if cfg_scales(float(t[i]), p) != (1.0, 1.0)]
    assert active == list(range(41))  # spec §7.4: steps 0..40


@pytest.fixture
def velocities():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(6, 4, generator=g) for _ in range(3)]


def test_no_text_guidance_means_no_guidance_at_all(velocities):
    v, vt, vi = velocities
    assert cfg_combine(v, vt, vi, 1.0, 3.0, "global", 0.0) is v


def test_global_renorm_formula(velocities):
    v, vt, vi = velocities
    u = vt + 4.0 * (v - vt)
    w = vi + 2.0 * (u - vi)
    ratio = min(max(v.norm().item() / (w.norm().item() + 1e-8), 0.0), 1.0)
    torch.testing.assert_close(cfg_combine(v, vt, vi, 4.0, 2.0, "global", 0.0), w * ratio)
    # image scale ≤ 1: the image step is skipped
    torch.testing.assert_close(cfg_combine(v, vt, None, 4.0, 1.0, "global", 1.0), u)


def test_channel_renorm_is_per_token(velocities):
    v, vt, vi = velocities
    w = vi + 2.0 * ((vt + 3.0 * (v - vt)) - vi)
    ratio = (v.norm(dim=1, keepdim=True) / (w.norm(dim=1, keepdim=True) + 1e-8)).clamp(0.2, 1.0)
    torch.testing.assert_close(cfg_combine(v, vt, vi, 3.0, 2.0, "channel", 0.2), w * ratio)


def test_text_channel_renorms_only_the_text_step(velocities):
    v, vt, vi = velocities
    u = vt + 4.0 * (v - vt)
    u = u * (v.norm(dim=1, keepdim=True) / (u.norm(dim=1, keepdim=True) + 1e-8)).clamp(0.0, 1.0)
    torch.testing.assert_close(
        cfg_combine(v, vt, vi, 4.0, 2.0, "text_channel", 0.0), vi + 2.0 * (u - vi)
    )


def test_renorm_never_grows_and_min_one_disables_it(velocities):
    v, vt, vi = velocities
    small = v * 0.01  # the guided velocity is then far larger than v: the ratio clamps low
    out = cfg_combine(small, vt, vi, 4.0, 2.0, "global", 1.0)
    torch.testing.assert_close(out, vi + 2.0 * ((vt + 4.0 * (small - vt)) - vi))


def test_euler_step_keeps_float32_state_and_bf16_velocity_product():
    x = torch.ones(3, dtype=torch.float32)
    v = torch.full((3,), 0.5, dtype=torch.bfloat16)
    out = euler_step(x, v, torch.tensor(0.1))
    assert out.dtype == torch.float32
    assert torch.equal(out, x - (v * torch.tensor(0.1)).float())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_timesteps=1), "num_timesteps must be an integer between 2 and 1000"),
        (dict(num_timesteps=-5), "num_timesteps"),
        (dict(timestep_shift=0.0), "timestep_shift must be > 0"),
        (dict(cfg_interval=(0.5, 1.5)), "cfg_interval must be"),
        (dict(cfg_interval=(0.8, 0.2)), "cfg_interval must be"),
        (dict(cfg_renorm_type="local"), "cfg_renorm_type must be one of"),
        (dict(cfg_renorm_min=2.0), "cfg_renorm_min must be in"),
        (dict(cfg_text_scale="4"), "cfg_text_scale must be a number"),
    ],
)
def test_bad_sampler_params(kwargs, message):
    with pytest.raises(InputError, match=message):
        SamplerParams(**kwargs)
